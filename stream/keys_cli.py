"""``hepascope keys``: make a CURVE key pair for the results channel."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = """\
Writes DIR/NAME.key (public) and DIR/NAME.key_secret (secret, mode 0600); never
overwrites. Typical setup:

  hepascope keys pubkeys --name server      # on the pipeline host
  hepascope keys ovkeys --name overlay      # on the overlay host
  mkdir -m 700 pubkeys/clients; cp ovkeys/overlay.key pubkeys/clients/  # allow it
  hepascope run ... --publish tcp://0.0.0.0:5555 --keys pubkeys
  hepascope overlay --connect tcp://HOST:5555 \\
      --server-key server.key --client-key ovkeys/overlay.key_secret

Copy only .key files between hosts, never .key_secret. As ssh does, the commands refuse
(one line naming the file and its mode) a keys directory, allow-list or key file that
group or others can write, a secret key they can read, and a key another user owns."""


def cmd_keys(args: argparse.Namespace) -> int:
    from hepascope.stream.security import write_keypair

    public, secret = write_keypair(args.dir, args.name)
    print(f"public {public}\nsecret {secret}")
    return 0


def add_subcommand(sub: Any) -> None:
    p = sub.add_parser("keys", help="make a CURVE key pair for the results channel",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, metavar="DIR", help="where to write (created if needed)")
    p.add_argument("--name", default="server",
                   help="file name stem (default 'server': what --keys DIR expects)")
    p.set_defaults(func=cmd_keys)
