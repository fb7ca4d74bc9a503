"""`--scheduler KIND` on plan, validate, up, logs, status and down."""

from __future__ import annotations

import argparse

from q7x2_deploy.scheduler_spec import SCHEDULER_KINDS


def add_scheduler_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", choices=SCHEDULER_KINDS, default=None,
                        help="where the job runs, instead of the inventory's scheduler.kind (default: ssh)")
