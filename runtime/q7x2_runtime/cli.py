"""`q7x2-runtime`: the commands that run inside the image.

Each subcommand lives in its own module exposing `register(subparsers)`; this file only
wires them together and turns UserError into one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from q7x2_runtime.command_registry import register_commands
from q7x2_runtime.errors import UserError

# module path -> it registers one or more subcommands
_COMMAND_MODULES = {
    "make-sample": "q7x2_runtime.sample.cli",
    "convert": "q7x2_runtime.convert.cli",
    "preprocess": "q7x2_runtime.preprocess.cli",
    "pretrain": "q7x2_runtime.pretrain.cli",
    "run": "q7x2_runtime.run_step",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="q7x2-runtime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_commands(sub, _COMMAND_MODULES, own_prefix="q7x2_runtime", extra="q7x2-deploy[runtime]")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"q7x2-runtime {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"q7x2-runtime {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
