"""The one exception type for mistakes in the user's input (DESIGN.md §6).

Library code raises :class:`UserError` with a message that names the file or key and what to do; the CLI
turns it into one line on stderr and exit code 2. Anything else is an internal error (exit 1, traceback).
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""
