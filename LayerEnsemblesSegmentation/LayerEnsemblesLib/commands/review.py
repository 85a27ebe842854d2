"""``layer-ensembles review INPUT... --model MODEL``: the web review app, served on trame-slicer.

trame and trame-slicer are imported only when the server starts (``LayerEnsemblesLib.webapp``): the
argument checks, and a refused host, cost nothing and need neither.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import InputError
from ..webapp.security import access_token


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "review", help="review cases in a web browser: worklist, slice views, heatmap, AULA, Segment Editor"
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders of images, or a previous `segment` output folder",
    )
    parser.add_argument("--model", required=True, help="a model file written by `layer-ensembles export`")
    parser.add_argument(
        "--out",
        default="layer-ensembles-review",
        help="review folder: results, corrections and the review file (default: %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host; every connection must then present the token",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("LAYER_ENSEMBLES_REVIEW_TOKEN"),
        help="access token (default: generated and printed once when --allow-remote)",
    )
    parser.set_defaults(run=run)


def check_inputs(inputs: list[str]) -> list[Path]:
    paths = [Path(text).expanduser() for text in inputs]
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    return [path.resolve() for path in paths]


def run(args: argparse.Namespace) -> int:
    inputs = check_inputs(args.inputs)
    token = access_token(args.host, args.allow_remote, args.token)
    out = Path(args.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    from ..webapp.app import serve  # trame, trame-slicer and VTK load only here

    serve(
        inputs=inputs,
        model=args.model,
        out=out,
        host=args.host,
        port=args.port,
        device=args.device,
        token=token,
    )
    return 0
