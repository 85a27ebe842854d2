"""``layer-ensembles``: one console command, one module per sub-command.

Each sub-command module defines ``add_parser(subparsers)`` and ``run(args) -> int`` and is imported
only when its command runs, so ``layer-ensembles info`` does not pay for scipy or matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings

from . import __version__
from .errors import InputError, first_line

COMMANDS = {
    "train": "LayerEnsemblesLib.commands.train",
    "export": "LayerEnsemblesLib.commands.export",
    "convert": "LayerEnsemblesLib.commands.convert",
    "info": "LayerEnsemblesLib.commands.info",
    "segment": "LayerEnsemblesLib.commands.segment",
    "evaluate": "LayerEnsemblesLib.commands.evaluate",
    "calibrate": "LayerEnsemblesLib.commands.calibrate",
    "demo": "LayerEnsemblesLib.commands.demo",
}


def _available_commands() -> dict[str, object]:
    modules = {}
    for name, module_name in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:  # a real missing dependency inside the command
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layer-ensembles",
        description="Layer Ensembles: single-pass segmentation uncertainty (Kushibar et al., MICCAI 2022).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in _available_commands().values():
        module.add_parser(subparsers)
    return parser


EXIT_BAD_INPUT = 2  # the user can fix it: the message says what and where
EXIT_BUG = 1  # anything else is a bug in this program: one line, and the traceback with --debug
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a reader that stopped early
DEBUG_VARIABLE = "LAYER_ENSEMBLES_DEBUG"


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; whatever goes wrong ends in one ``error:`` line, never a traceback.

    Exit codes: 0 success, 2 bad input (or an environment problem the user fixes: a full disk, a
    read-only folder, too little memory), 1 a bug, 130 interrupted, 141 output pipe closed early.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False) or os.environ.get(DEBUG_VARIABLE))
    warnings.formatwarning = _one_line_warning  # formatting only: pytest still records them
    previous_handler = _stop_on_sigterm()
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe must fail here, inside the handler, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except InputError as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except MemoryError:
        return _fail(
            "out of memory: use a smaller input, a smaller --window or --memory-budget", EXIT_BAD_INPUT
        )
    except OSError as error:  # disk full, permission denied, a folder where a file belongs, ...
        where = f"{error.filename}: " if error.filename else ""
        return _fail(f"{where}{error.strerror or first_line(error)}", EXIT_BAD_INPUT)
    except Exception as error:  # noqa: BLE001 - the last line of defence: a bug, reported in one line
        if debug:
            raise
        return _fail(
            f"internal error ({type(error).__name__}: {first_line(error)}); please report it with the "
            f"command line (set {DEBUG_VARIABLE}=1 for the traceback)",
            EXIT_BUG,
        )
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so every ``finally`` runs and temporary files are removed."""


def _stop_on_sigterm():
    """Turn SIGTERM into :class:`Terminated` (the default would kill the process mid-write)."""

    def handler(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        return None


def _fail(message: str, code: int) -> int:
    try:
        print(f"error: {message}", file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass
    return code


def _silence_stdout() -> None:
    """After a reader closed the pipe, point stdout at /dev/null so the exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as ``warning: ...`` lines, without the source file and code line Python adds."""
    text = message if isinstance(message, Warning) else Warning(message)
    return f"warning: {first_line(text, 400)}\n"


if __name__ == "__main__":
    sys.exit(main())
