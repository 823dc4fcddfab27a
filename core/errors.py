"""The one exception type that reaches a user as a single clear line instead of a traceback."""


class InputError(Exception):
    """Bad input from the user (file, column, value or config); the message names what is wrong."""
