"""Running the server: one process that serves a port and drains on SIGTERM
(process.py), and the parent of several such processes sharing the port (workers.py)."""


class StartError(Exception):
    """The server cannot start for a reason the user can mend; str() says how."""
