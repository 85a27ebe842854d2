"""One exception type for every problem the user can fix, so the CLI and Slicer print one clear line."""


class InputError(ValueError):
    """Bad input: the message names the file and the problem, in one line."""


class Cancelled(Exception):
    """The user cancelled a run; whatever it was building is discarded and nothing is written."""
