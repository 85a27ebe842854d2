"""What a given Python version cannot import or run, found statically in source text.

Slicer bundles its own Python (5.8: 3.9, 5.10: 3.12), and nothing here can run that interpreter. The
module once failed to import in Slicer 5.8 because of ``X | None`` annotations evaluated at import time
and ``zip(strict=...)``; both are valid *syntax* for 3.9's parser in some positions, so besides parsing
with ``feature_version`` this looks for the constructs that fail only when they run.
"""

from __future__ import annotations

import ast
from pathlib import Path

SLICER_PYTHON = {"5.8": (3, 9), "5.10": (3, 12)}  # the Python each Slicer release bundles
# (module, name) -> first Python version that has it
NEW_NAMES = {
    ("tomllib", None): (3, 11),
    ("typing", "Self"): (3, 11),
    ("typing", "assert_never"): (3, 11),
    ("enum", "StrEnum"): (3, 11),
    ("datetime", "UTC"): (3, 11),
    ("itertools", "batched"): (3, 12),
    ("typing", "override"): (3, 12),
    ("warnings", "deprecated"): (3, 13),
}
WRAPPER_DECORATORS = {"parameterNodeWrapper", "dataclass"}  # they evaluate annotations at class creation


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )


def _has_union_operator(annotation: ast.expr | None) -> bool:
    return annotation is not None and any(
        isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) for node in ast.walk(annotation)
    )


def _evaluated_annotations(tree: ast.Module):
    """Annotations Python evaluates when the module is imported (or the class is created)."""
    future = _has_future_annotations(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            decorators = {getattr(d, "id", getattr(d, "attr", "")) for d in node.decorator_list}
            wrapped = bool(decorators & WRAPPER_DECORATORS)
            for item in node.body:  # a wrapper resolves its field types even under the __future__ import
                if isinstance(item, ast.AnnAssign) and (wrapped or not future):
                    yield item.annotation
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not future:
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            yield from (
                a.annotation for a in arguments + [node.args.vararg, node.args.kwarg] if a is not None
            )
            yield node.returns
    if not future:  # module-level variables; a function's local annotations are never evaluated
        yield from (node.annotation for node in tree.body if isinstance(node, ast.AnnAssign))


def problems(source: str, filename: str, version: tuple[int, int]) -> list[str]:
    """One line per construct ``version`` cannot import or run; empty when there is none."""
    try:
        tree = ast.parse(source, filename=filename, feature_version=version)
    except SyntaxError as error:
        return [f"{filename}:{error.lineno}: Python {version[0]}.{version[1]} cannot parse this: {error.msg}"]
    found = []
    if version < (3, 10):
        for annotation in _evaluated_annotations(tree):
            if _has_union_operator(annotation):
                found.append(
                    f"{filename}:{annotation.lineno}: `X | Y` annotation evaluated at runtime "
                    "needs Python 3.10"
                )
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "zip"
                and any(keyword.arg == "strict" for keyword in node.keywords)
            ):
                found.append(f"{filename}:{node.lineno}: zip(strict=...) needs Python 3.10")
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") in ("isinstance", "issubclass")
                and len(node.args) == 2
                and _has_union_operator(node.args[1])
            ):
                found.append(f"{filename}:{node.lineno}: isinstance with `X | Y` needs Python 3.10")
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [(node.module, alias.name) for alias in node.names] + [(node.module, None)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names = [(node.value.id, node.attr)]
        for name in names:
            needed = NEW_NAMES.get(name)
            if needed is not None and version < needed:
                label = ".".join(part for part in name if part)
                found.append(f"{filename}:{node.lineno}: {label} needs Python {needed[0]}.{needed[1]}")
    return found


def problems_in_files(files: list[Path], version: tuple[int, int]) -> list[str]:
    found = []
    for path in files:
        found += problems(path.read_text(encoding="utf-8"), str(path), version)
    return found
