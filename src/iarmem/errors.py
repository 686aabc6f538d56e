"""The one exception type that reaches the user as a one-line message and exit code 2."""


class UserError(Exception):
    """A problem with the user's input: the message names the thing and the fix.

    The CLI prints ``error: <message>`` and exits with code 2; no traceback unless --debug.
    """

    exit_code = 2
