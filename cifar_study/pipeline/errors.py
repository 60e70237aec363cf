"""Errors caused by the user's input: stages print them as one line, without a traceback."""


class UserError(Exception):
    """A problem the user can fix (a parameter, a file, the machine); the message says how."""


class ParamError(UserError):
    """A value in params.yaml is missing, of the wrong type or out of range."""


class DataError(UserError):
    """The input data (archive, folder, download) is missing, corrupt or malformed."""


class CheckpointError(UserError):
    """A checkpoint cannot be loaded or does not fit the model it is loaded into."""


class OutputError(UserError):
    """An output cannot be written (a full disk, a read-only folder); the previous outputs stay."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none), for one-line errors."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
