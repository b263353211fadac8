"""User-facing errors."""


class LatfError(Exception):
    """An error caused by the user's input; its message says what to fix.

    The command line prints it as one line and exits with status 2.
    """
