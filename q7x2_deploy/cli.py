"""`q7x2-deploy`: validate, plan, build, start, watch and stop a pretraining job.

Each command lives in its own module exposing `register(subparsers)`; this file wires them
together and turns UserError into one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import sys

from q7x2_runtime.command_registry import run_cli

_COMMAND_MODULES = {
    "validate": "q7x2_deploy.commands.validate",
    "plan": "q7x2_deploy.commands.plan",
    "build-image": "q7x2_deploy.commands.build_image",
    "check": "q7x2_deploy.commands.check",
    "up": "q7x2_deploy.commands.up",
    "logs": "q7x2_deploy.commands.logs",
    "status": "q7x2_deploy.commands.status",
    "down": "q7x2_deploy.commands.down",
    "report": "q7x2_deploy.commands.report",
    "collect": "q7x2_deploy.commands.collect",
    "watch": "q7x2_deploy.commands.watch",
    "sandbox": "q7x2_deploy.sandbox.cli",
}
# The sandbox (root only, for trying and testing) has dependencies of its own.
_COMMAND_EXTRAS = {"sandbox": "q7x2-deploy[sandbox]"}


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        "q7x2-deploy", __doc__.splitlines()[0], _COMMAND_MODULES, own_prefix="q7x2_deploy", extra="q7x2-deploy[deploy]", argv=argv,
        extras=_COMMAND_EXTRAS,
    )


if __name__ == "__main__":
    sys.exit(main())
