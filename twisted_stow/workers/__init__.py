"""Worker processes (``twistd stow --workers N``): one main process, N workers.

``main`` builds the main process's services, ``handover`` binds the
listening sockets it passes on, ``supervisor`` starts, restarts and drains
the workers, ``supervision`` adds its messages to the control channel,
``child`` is a worker's entry point, ``scrape`` serves ``--metrics-listen``
for all of them.  ``shared`` holds what the whole server counts once (upload
slots, the authentication throttle, the password-check budget); ``control``
carries it over each worker's AMP connection to the main process.
docs/OPERATIONS.md ("Worker processes") says who owns what.
"""
