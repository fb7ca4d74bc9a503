"""Errors the user can act on: printed as one line, never as a traceback."""


class UserError(Exception):
    """Bad input or a failed precondition. The message says what, where, and what to do."""

    exit_code = 2
