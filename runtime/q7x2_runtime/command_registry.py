"""Register each CLI command from its own module, tolerating commands this install lacks.

A command whose module needs a package that is not installed (torch inside a deployer-only
install, paramiko inside the image) still appears in --help and, when run, says which extra
to install in one line instead of a traceback at start-up.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import typing

from q7x2_runtime.errors import UserError
from q7x2_runtime.safe_text import escape_non_printing


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line too (argparse prints the whole usage block first), pointing
    at --help; a value holding a newline is shown escaped."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, escape_non_printing(f"{self.prog}: error: {message} (see {self.prog} --help)") + "\n")


def register_commands(sub: argparse._SubParsersAction, modules: dict[str, str], own_prefix: str, extra: str,
                      extras: dict[str, str] | None = None) -> None:
    """`modules` maps each command name to the module that registers it; `extras` names the
    install extra of a command that needs another one than `extra`."""
    for command, name in modules.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(own_prefix):
                continue  # not part of this build at all
            _register_unavailable(sub, command, e.name or "a dependency", (extras or {}).get(command, extra))
            continue
        module.register(sub)


def _register_unavailable(sub: argparse._SubParsersAction, command: str, missing: str, extra: str) -> None:
    p = sub.add_parser(command, help=f"(unavailable: needs {missing})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def _fail(_args: argparse.Namespace) -> int:
        raise UserError(f"this install lacks the Python package {missing!r}: pip install '{extra}'")

    p.set_defaults(func=_fail)


def _modules_needed(modules: dict[str, str], argv: list[str]) -> dict[str, str]:
    """Only the named command's module when the command line names one (the top-level parser
    takes no option with a value, so the first other word is the command): importing every
    command's module costs a run its dependencies' imports (numpy, pydantic: a quarter of a
    second), and preprocess starts its confirming process before it has reached them. Help,
    or a name that is no command, gets all of them, so argparse can list every choice."""
    named = next((a for a in argv if not a.startswith("-")), None)
    return {named: modules[named]} if named in modules else modules


def run_cli(prog: str, description: str, modules: dict[str, str], *, own_prefix: str, extra: str, argv: list[str] | None,
            extras: dict[str, str] | None = None) -> int:
    """Parse, dispatch, and turn UserError into one line per problem on stderr."""
    parser = OneLineParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_commands(sub, _modules_needed(modules, sys.argv[1:] if argv is None else argv), own_prefix=own_prefix,
                      extra=extra, extras=extras)  # fmt: skip
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        # An inventory with several violations reports each on its own line.
        for line in getattr(e, "lines", None) or [f"{prog} {args.command}: error: {e}"]:
            # A path or value holding a newline must not split the line.
            print(escape_non_printing(line), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130
