"""`q7x2-deploy watch INVENTORY`: a full-screen live view of the job; `q` or Ctrl-C quits.

Watching never touches the job: it only reads what `status` reads. When the output is not a
terminal the same view is printed as plain text, one snapshot per refresh.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Iterator

from rich.console import Console
from rich.live import Live

from q7x2_deploy.commands.session import add_host_key_argument, add_inventory_argument, cluster_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("watch", help="a live full-screen view of the job (q quits; the job keeps running)")
    add_inventory_argument(p)
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="refresh period (default 2)")
    p.add_argument("--count", type=int, default=None, metavar="N", help="stop after N refreshes")
    p.add_argument("--quiet-threshold", type=float, default=120.0, metavar="SECONDS",
                   help="show a host's quiet time in red past this (default 120)")
    add_host_key_argument(p)
    p.set_defaults(func=run)


@contextlib.contextmanager
def _keys(stop: threading.Event) -> Iterator[None]:
    """Watch stdin for `q` in cbreak mode (no Enter needed); restore the terminal on exit."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready and os.read(fd, 1) in (b"q", b"Q"):
                stop.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join(1)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(args: argparse.Namespace) -> int:
    from q7x2_deploy.commands.watch_view import render
    from q7x2_deploy.executor.watch_data import Watcher

    if not args.interval > 0:
        raise SystemExit("q7x2-deploy: --interval must be a positive number of seconds")
    console = Console()
    stop = threading.Event()
    with cluster_from_args(args) as cluster:
        watcher = Watcher(cluster)
        job = cluster.plan.job_name
        n = 0

        def view():
            return render(job, watcher.snapshot(), quiet_threshold_s=args.quiet_threshold, width=console.width)

        try:
            if not console.is_terminal:
                while not stop.is_set():
                    console.print(view())
                    console.print()
                    n += 1
                    if args.count is not None and n >= args.count:
                        break
                    stop.wait(args.interval)
                return 0
            with _keys(stop), Live(view(), console=console, screen=True, auto_refresh=False) as live:
                n = 1
                while not stop.is_set() and (args.count is None or n < args.count):
                    deadline = time.monotonic() + args.interval
                    while not stop.is_set() and time.monotonic() < deadline:
                        stop.wait(0.1)
                    if stop.is_set():
                        break
                    live.update(view(), refresh=True)
                    n += 1
        except KeyboardInterrupt:
            pass  # Ctrl-C leaves the view, never the job
    return 0
