"""Before/after: first runs of `q7x2-runtime preprocess` of two commits, interleaved in one run.

The machine's speed drifts by 10-20 % over minutes (other jobs come and go), more than most
single changes are worth, so a change is judged by runs of both versions taken turn about:
the runtime package of --base is extracted from git (`git archive`) beside this checkout's,
byte-compiled as pip installs it, and each round runs one first run of each (an empty user
cache: the engine is proven; the installation record of an image build in place), on the
alpaca-sized data and the real Qwen tokenizer of bench/preprocess.py.

  python bench/preprocess_ab.py --base ca24124 --rounds 10

Prints, for each version, the median and best wall time, median CPU-s (the command and its
reaped children) and median time to the first document, and checks that both wrote the same
.bin/.idx bytes.
"""

from __future__ import annotations

import argparse
import compileall
import filecmp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.assets import QWEN_DIR_NAME, qwen_tokenizer_dir  # noqa: E402
from bench.preprocess import OUT, make_parquet, ours  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def extract_runtime(rev: str, into: Path) -> Path:
    """The runtime package of `rev`, as a directory to put on PYTHONPATH."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "runtime"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    root = into / "runtime"
    compileall.compile_dir(root / "q7x2_runtime", quiet=1)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit to compare this checkout's runtime with")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    work = args.out / f"rows{args.rows}-{QWEN_DIR_NAME}-seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    parquet = work / "alpaca.parquet"
    if not parquet.exists():
        make_parquet(parquet.with_suffix(".tmp"), args.rows, args.seed)
        parquet.with_suffix(".tmp").rename(parquet)
    tok_dir = qwen_tokenizer_dir()

    import q7x2_runtime

    compileall.compile_dir(Path(q7x2_runtime.__file__).parent, quiet=1)
    share = work / "share-ab"
    shutil.rmtree(share, ignore_errors=True)
    os.environ["Q7X2_SHARE_DIR"] = str(share)
    from q7x2_runtime.doctor.cli import record_preprocess

    record_preprocess()  # what an image build records (shared: transformers' tables, library verdicts)
    del os.environ["Q7X2_SHARE_DIR"]

    with tempfile.TemporaryDirectory(prefix="q7x2-ab-") as tmp:
        versions = {args.base: str(extract_runtime(args.base, Path(tmp))), "this checkout": None}
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in versions}
        outputs: dict[str, Path] = {}
        for _ in range(args.rounds):
            for name, path in versions.items():
                env_before = os.environ.get("PYTHONPATH")
                if path is not None:
                    os.environ["PYTHONPATH"] = path
                out = work / "ab" / ("base" if path else "head") / "alpaca"
                shutil.rmtree(out.parent, ignore_errors=True)
                out.parent.mkdir(parents=True)
                cache = work / "ab-cache"
                shutil.rmtree(cache, ignore_errors=True)
                try:
                    (wall, cpu), first_doc, _ = ours(tok_dir, parquet, out, 2, cache, share)
                finally:
                    if env_before is None:
                        os.environ.pop("PYTHONPATH", None)
                    else:
                        os.environ["PYTHONPATH"] = env_before
                runs[name].append((wall, cpu, first_doc))
                outputs[name] = out
    for name, rs in runs.items():
        walls = [r[0] for r in rs]
        print(
            f"{name:>14}: wall median {statistics.median(walls):.2f} s (best {min(walls):.2f}), "
            f"CPU median {statistics.median(r[1] for r in rs):.2f} s, "
            f"first document median {statistics.median(r[2] for r in rs):.2f} s; walls {' '.join(f'{w:.2f}' for w in walls)}"
        )
    base, head = (statistics.median(r[0] for r in runs[n]) for n in versions)
    print(f"median wall, this checkout / {args.base}: {head / base:.3f}")
    same = all(
        filecmp.cmp(f"{outputs[args.base]}_text_document{ext}", f"{outputs['this checkout']}_text_document{ext}", shallow=False)
        for ext in (".bin", ".idx")
    )
    print(f".bin/.idx byte-identical between the two: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
