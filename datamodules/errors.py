"""The error for input data a reader does not accept (wrong format or schema), as opposed to a bug.

Its message names the file; entry points report it in one line with exit code 2, since the user
acts on it by pointing the run at other data.
"""


class DataFormatError(ValueError):
    """A data file (shard, TAP-Vid pickle, annotation) that is not in the format its reader expects."""
