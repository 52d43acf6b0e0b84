"""The one exception type for mistakes a user can make (bad flag, impossible space, ...).

The CLI turns it into one line on stderr and exit code 2; everything else is a bug and keeps
its traceback.
"""


class UserError(ValueError):
    """A problem in what the user asked for; the message says what and how to fix it."""
