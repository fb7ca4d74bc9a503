"""`q7x2-runtime`: the commands that run inside the image.

Each subcommand lives in its own module exposing `register(subparsers)`; this file only
wires them together and turns UserError into one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import sys

from q7x2_runtime.command_registry import run_cli

# module path -> it registers one or more subcommands
_COMMAND_MODULES = {
    "make-sample": "q7x2_runtime.sample.cli",
    "convert": "q7x2_runtime.convert.cli",
    "preprocess": "q7x2_runtime.preprocess.cli",
    "pretrain": "q7x2_runtime.pretrain.cli",
    "run": "q7x2_runtime.run_step",
    "doctor": "q7x2_runtime.doctor.cli",
}


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        "q7x2-runtime", __doc__.splitlines()[0], _COMMAND_MODULES, own_prefix="q7x2_runtime", extra="q7x2-deploy[runtime]", argv=argv
    )


if __name__ == "__main__":
    sys.exit(main())
