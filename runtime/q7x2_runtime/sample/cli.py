"""`q7x2-runtime make-sample DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from q7x2_runtime.sample.make import make_sample

    out = Path(args.dir)
    make_sample(out)
    print(f"sample written: {out}/model (HF checkpoint + tokenizer), {out}/data/alpaca.parquet")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-sample",
        help="write a tiny Qwen2.5 checkpoint and an alpaca-shaped parquet (deterministic, offline)",
        description="Write DIR/model (a tiny Qwen2.5-architecture HF checkpoint with tokenizer) and "
        "DIR/data/alpaca.parquet. The same bytes on every run; nothing is downloaded.",
    )
    p.add_argument("dir", metavar="DIR", help="output directory (created, or replaced if it holds a previous sample)")
    p.set_defaults(func=_run)
