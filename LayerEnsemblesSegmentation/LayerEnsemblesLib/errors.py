"""One exception type for every problem the user can fix, so the CLI and Slicer print one clear line."""


class InputError(ValueError):
    """Bad input: the message names the file and the problem, in one line."""


class Cancelled(Exception):
    """The user cancelled a run; whatever it was building is discarded and nothing is written."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message (TorchScript errors often start blank)."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(error).__name__
