"""twisted-stow: a streaming DICOMweb STOW-RS server on Twisted and Klein.

The package root imports nothing: the pure core (errors, outcomes, multipart,
singlepart, mediatype, response, uids, dicomheader, validation, flow, limits,
config) must load without Twisted.
"""

__version__ = "0.1.0"
