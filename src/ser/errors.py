"""The exception every user-fixable failure derives from."""


class SerError(Exception):
    """Bad input, configuration or state that the user can fix: the message names the file
    or key and what is wrong. The ``ser`` command prints it as one line and exits 2."""
