"""`q7x2-runtime run`: run one step's command with the Ascend environment, teeing to a log.

MindSpeed-LLM's scripts expect the CANN environment that `source set_env.sh` creates, a
logs directory that exists, and output both on the console and in a file. Python cannot
`source` a shell script, so the script is run by bash once and its resulting environment
is taken over.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from q7x2_runtime.errors import UserError

CANN_ENV_SCRIPTS = (
    "/usr/local/Ascend/ascend-toolkit/set_env.sh",
    "/usr/local/Ascend/nnal/atb/set_env.sh",
)


def cann_environment(base: dict[str, str], scripts: tuple[str, ...] = CANN_ENV_SCRIPTS) -> dict[str, str]:
    """The environment after sourcing every CANN set_env script that exists."""
    present = [s for s in scripts if Path(s).is_file()]
    if not present:
        return dict(base)
    # Paths go to bash as positional parameters, never spliced into the script text.
    script = 'for f in "$@"; do . "$f" || exit 3; done; env -0'
    proc = subprocess.run(["bash", "-c", script, "bash", *present], env=base, capture_output=True)
    if proc.returncode != 0:
        raise UserError(f"sourcing {', '.join(present)} failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
    env: dict[str, str] = {}
    for entry in proc.stdout.split(b"\0"):
        if b"=" in entry:
            k, v = entry.split(b"=", 1)
            env[k.decode()] = v.decode(errors="replace")
    return env


def run_teed(argv: list[str], *, log: Path | None, cwd: Path | None, env: dict[str, str]) -> int:
    """Run argv, copying its combined output to stdout and (appending) to the log file."""
    if log is not None:
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create log directory {log.parent}: {e.strerror}") from None
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        raise UserError(f"{argv[0]}: command not found in the image (cwd {cwd or os.getcwd()})") from None
    except NotADirectoryError:
        raise UserError(f"working directory {cwd} does not exist") from None
    assert proc.stdout is not None
    with open(log, "ab") if log is not None else open(os.devnull, "wb") as sink:
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            sink.write(line)
            sink.flush()
    return proc.wait()


def _run(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UserError("nothing to run: give the command after --")
    env = dict(os.environ)
    if args.cann_env:
        env = cann_environment(env)
    if args.cwd is not None and not args.cwd.is_dir():
        raise UserError(f"working directory {args.cwd} does not exist")
    code = run_teed(argv, log=args.log, cwd=args.cwd, env=env)
    if code < 0:  # killed by a signal: report it the way a shell would
        return 128 - code
    return code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a step's command with the CANN env, teeing to a log file")
    p.add_argument("--cann-env", action="store_true", help="source the CANN set_env scripts that exist")
    p.add_argument("--cwd", type=Path, default=None, help="working directory")
    p.add_argument("--log", type=Path, default=None, help="append output to this file too")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(func=_run)
