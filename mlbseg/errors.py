"""The one exception type for mistakes in the user's input (docs/design.md §6).

Library code raises :class:`UserError` with a message that names the file or key and what to do; the CLI
turns it into one line on stderr and exit code 2. Anything else is an internal error (exit 1, traceback).
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""


def message_of(err: UserError) -> str:
    r"""The one-line message of ``err``, also when torch re-raised it from a DataLoader worker.

    A loader worker's exception reaches the main process as ``type(err)(text)``, where ``text`` is
    "Caught UserError in DataLoader worker process N", the worker's traceback, and the original
    ``mlbseg.errors.UserError: <message>`` as its last line.

    Example:
        >>> message_of(UserError("a.jpg is not a readable image"))
        'a.jpg is not a readable image'
        >>> wrapped = "Caught UserError in DataLoader worker process 0.\nOriginal Traceback ...\n"
        >>> message_of(UserError(wrapped + "mlbseg.errors.UserError: a.jpg is not a readable image\n"))
        'a.jpg is not a readable image'
    """
    text = str(err)
    marker = f"{UserError.__module__}.{UserError.__qualname__}: "
    if text.startswith("Caught UserError in DataLoader worker") and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text
