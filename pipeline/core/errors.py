"""The error a user can fix: bad input, named by file (or setting) and what is wrong.

Stages and commands end on one line for these (``stage.main``, ``pipeline.read``), without a
traceback; any other exception is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Input that does not fit: the message names the file or setting and what is wrong."""
