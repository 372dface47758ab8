"""``kvmworker schema``: write the JSON Schemas (the committed ``schemas/`` are its output)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("schema", help="write the JSON schemas of the envelope, reply and every command")
    parser.add_argument("--out", type=Path, default=Path("schemas"), help="directory to write into (default: schemas)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kvmworker.app import build_registry
    from kvmworker.schema import write_schemas
    from kvmworker.settings import load_settings

    # the schemas depend on the code alone: no variable or config file of this machine is read
    for path in write_schemas(build_registry(load_settings({"host": "schema"}, (), environ={})), args.out):
        print(path, flush=True)
    return 0
