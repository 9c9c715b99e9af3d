"""Worker processes (``twistd stow --workers N``): one main process, N workers.

``main`` builds the main process's services, ``handover`` binds the
listening sockets it passes on, ``supervisor`` starts, restarts and drains
the workers, ``supervision`` holds the control channel's messages,
``child`` is a worker's entry point, ``scrape`` serves ``--metrics-listen``
for all of them.  docs/OPERATIONS.md ("Worker processes") says who owns what.
"""
