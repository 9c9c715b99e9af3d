"""Worker processes: the main process and the workers it runs (docs/DESIGN.md).

``shared`` holds what the whole server counts once (upload slots, the
authentication throttle, the password-check budget); ``control`` carries it
over each worker's AMP connection to the main process.
"""
