"""`q7x2-deploy`: validate, plan, build, start, watch and stop a pretraining job.

Each command lives in its own module exposing `register(subparsers)`; this file wires them
together and turns UserError into one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from q7x2_runtime.command_registry import register_commands
from q7x2_runtime.errors import UserError

_COMMAND_MODULES = {
    "validate": "q7x2_deploy.commands.validate",
    "plan": "q7x2_deploy.commands.plan",
    "build-image": "q7x2_deploy.commands.build_image",
    "check": "q7x2_deploy.commands.check",
    "up": "q7x2_deploy.commands.up",
    "logs": "q7x2_deploy.commands.logs",
    "status": "q7x2_deploy.commands.status",
    "down": "q7x2_deploy.commands.down",
    "sandbox": "q7x2_deploy.sandbox.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="q7x2-deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_commands(sub, _COMMAND_MODULES, own_prefix="q7x2_deploy", extra="q7x2-deploy[deploy]")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        # An inventory with several violations reports each on its own line.
        for line in getattr(e, "lines", None) or [f"q7x2-deploy {args.command}: error: {e}"]:
            print(line, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"q7x2-deploy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
