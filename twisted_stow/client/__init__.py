"""``stow-upload``: the bulk-upload client (issue 15, docs/UPLOAD.md).

Pure parts, importable without Twisted: ``files`` (finding DICOM files and
reading their headers), ``batching`` (requests per study), ``retry`` (the
backoff policy), ``answer`` (the Store Instances Response as per-instance
outcomes), ``journal``, ``report`` and ``summary``, ``options`` (the command
line).  Twisted edges: ``body`` (the streaming multipart/related
``IBodyProducer``), ``runner`` (requests in flight, retries), ``progress``
and ``command`` (the console script on ``task.react``).  The client only
talks HTTP to a server: it imports nothing of the server's edges.
"""
