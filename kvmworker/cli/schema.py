"""``kvmworker schema``: write the JSON Schemas (the committed ``schemas/`` are its output)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("schema", help="write the JSON schemas of the envelope, reply and every command")
    parser.add_argument("--out", type=Path, default=Path("schemas"), help="directory to write into (default: schemas)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kvmworker.api.catalogue import worker_commands
    from kvmworker.schema import write_schemas

    # the schemas depend on the declarations alone: no handler is built, no setting of this machine is read
    for path in write_schemas(worker_commands(), args.out):
        print(path, flush=True)
    return 0
