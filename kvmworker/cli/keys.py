"""``kvmworker keys``: make Ed25519 key files (0600) and print their public halves for the other side.

kvmworker keys generate orchestrator-keys.json --id o1     # the orchestrator's command key
kvmworker keys generate orchestrator-keys.json --id o2 --add [--activate]    # rotation
kvmworker keys public --keys-file orchestrator-keys.json --orchestrator    # → the workers' trusted keys file
kvmworker keys public                                     # on a worker: its reply key → the clients' `hosts`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvmworker.cli.common import add_settings_flags, print_json, settings_from
from kvmworker.trust.keys import (
    REPLY_KEYS_NAME,
    KeyFileError,
    add_key,
    generate_key_file,
    load_private_keys,
    new_key_id,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="make signing key files and show their public keys")
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    gen = sub.add_parser("generate", help="a new private key file (0600), or --add a key to one; prints its public key")
    gen.add_argument("file", metavar="FILE", help="the private key file to create (JSON, or TOML by its suffix)")
    gen.add_argument("--id", dest="key_id", default=None, help="the key id (default: key-<UTC time>)")
    gen.add_argument("--add", action="store_true", help="add a key to an existing file (rotation)")
    gen.add_argument("--activate", action="store_true", help="with --add: sign with the new key from now on")
    gen.set_defaults(run=run_generate)

    pub = sub.add_parser("public", help="the public keys of a private key file, ready for a trusted keys file")
    pub.add_argument(
        "--orchestrator", action="store_true", help="print them as orchestrator keys (for the workers' file)"
    )
    add_settings_flags(pub, "host", "state-dir", "keys-file")
    pub.set_defaults(run=run_public)


def run_generate(args: argparse.Namespace) -> int:
    key_id = args.key_id or new_key_id("key")
    try:
        if args.add:
            keys = add_key(Path(args.file), key_id, activate=args.activate)
        else:
            keys = generate_key_file(Path(args.file), key_id)
    except FileExistsError:
        print(f"kvmworker keys generate: {args.file} exists (--add adds a key to it)", file=sys.stderr)
        return 1
    except KeyFileError as exc:
        print(f"kvmworker keys generate: {exc}", file=sys.stderr)
        return 1
    print_json({key_id: keys.public()[key_id]})
    return 0


def run_public(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    path = settings.keys_file or settings.state_dir / REPLY_KEYS_NAME
    try:
        public = load_private_keys(path).public()
    except KeyFileError as exc:
        print(f"kvmworker keys public: {exc}", file=sys.stderr)
        return 1
    print_json({"orchestrator": public} if args.orchestrator else {"hosts": {settings.host: public}})
    return 0
