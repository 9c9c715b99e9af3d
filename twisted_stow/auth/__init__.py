"""Who may store: authentication, per-route authorization and failure throttling.

Pure modules (no Twisted): ``passwords`` (salted password hashes, token
digests), ``grants`` (which AE titles and workflow ids a principal may
store to), ``files`` (the users and tokens files), ``jwt_verify`` (JWTs
through PyJWT), ``throttle`` (slowing down peers that keep failing) and
``cache`` (remembered password verifications).  The Twisted edge is
``cred`` (twisted.cred credentials, checkers, realm and portal),
``guard`` (the header-time decision used by ``StowService.begin_upload``)
and ``accesslog`` (the principal in each request's access log line).
``command`` is the ``stow-passwd`` tool that edits the files.
"""
