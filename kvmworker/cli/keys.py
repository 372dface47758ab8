"""``kvmworker keys``: make Ed25519 key files (0600) and print their public halves for the other side.

kvmworker keys generate orchestrator-keys.json --id o1     # the orchestrator's command key
kvmworker keys generate orchestrator-keys.json --id o2 --add [--activate]    # rotation
kvmworker keys public --keys-file orchestrator-keys.json --orchestrator    # → the workers' trusted keys file
kvmworker keys public                                     # on a worker: its reply key → the clients' `hosts`
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kvmworker.cli.common import EXIT_USAGE, CliError, add_settings_flags, print_json, settings_from


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="make Ed25519 key files (0600) and print their public keys")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

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
    from kvmworker.trust.keys import add_key, generate_key_file, new_key_id

    key_id = args.key_id or new_key_id("key")
    path = Path(args.file)
    try:
        keys = add_key(path, key_id, activate=args.activate) if args.add else generate_key_file(path, key_id)
    except FileExistsError:
        raise CliError(f"keys generate: {path} exists (--add adds a key to it)", EXIT_USAGE) from None
    print_json({key_id: keys.public()[key_id]})
    return 0


def run_public(args: argparse.Namespace) -> int:
    from kvmworker.trust.keys import REPLY_KEYS_NAME, load_private_keys

    settings = settings_from(args)
    public = load_private_keys(settings.keys_file or settings.state_dir / REPLY_KEYS_NAME).public()
    print_json({"orchestrator": public} if args.orchestrator else {"hosts": {settings.host: public}})
    return 0
