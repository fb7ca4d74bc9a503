"""`q7x2-runtime preprocess`: MindSpeed-LLM's preprocess_data.py flags, several times faster."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preprocess",
        help="tokenize a text dataset into Megatron indexed datasets (.bin/.idx)",
        description=(
            "Tokenize parquet/jsonl/json/csv/txt/arrow data (a file or a directory of one format) into "
            "<output-prefix>_<key>_document.bin/.idx, one row = one document, with the same ids as "
            "MindSpeed-LLM's preprocess_data.py (GeneralPretrainHandler)."
        ),
    )
    p.add_argument("--input", required=True, help="a data file, or a directory of files of one format")
    p.add_argument("--tokenizer-name-or-path", required=True, help="HF tokenizer directory (tokenizer.json ...)")
    p.add_argument("--tokenizer-type", default="PretrainedFromHF", choices=["PretrainedFromHF"])
    p.add_argument("--handler-name", default="GeneralPretrainHandler", choices=["GeneralPretrainHandler"])
    p.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.bin/.idx")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="columns to tokenize (default: text)")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (output is identical for any)")
    p.add_argument("--append-eod", action="store_true", help="append the tokenizer's eos id to every document")
    p.add_argument("--log-interval", type=int, default=1000, help="documents between log lines (non-terminal)")
    p.add_argument("--batch-rows", type=int, default=1024, help="rows per unit of work")
    p.add_argument(
        "--engine",
        choices=["auto", "fast", "hf"],
        default="auto",
        help="auto: tiktoken's BPE core when provably identical to the HF tokenizer, else HF",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    # No preprocess process does linear algebra, yet importing numpy starts OpenBLAS's thread
    # pool: a few hundred milliseconds of CPU over the parent, workers and confirming process.
    # Set before any of them imports numpy; an operator's own setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # A first run's longest step is loading transformers in the confirming process: started
    # before the rest of preprocess is even imported (a quarter of a second of pyarrow & co).
    from q7x2_runtime.preprocess.confirming import confirmer_for

    confirmer = confirmer_for(args.tokenizer_name_or_path, args.engine, args.workers)
    try:
        return _main(args, confirmer)
    finally:
        if confirmer is not None:
            confirmer.close()


def _main(args: argparse.Namespace, confirmer) -> int:
    # Imported here: building the runtime's parser must not load pyarrow and friends.
    from q7x2_runtime.preprocess.pipeline import PreprocessOptions, run

    try:
        return _report(run(PreprocessOptions(
            input=args.input,
            tokenizer=args.tokenizer_name_or_path,
            output_prefix=args.output_prefix,
            json_keys=args.json_keys,
            workers=args.workers,
            append_eod=args.append_eod,
            log_interval=args.log_interval,
            batch_rows=args.batch_rows,
            engine=args.engine,
        ), confirmer))  # fmt: skip
    except OSError as e:
        from q7x2_runtime.os_errors import is_environmental, os_error

        if not is_environmental(e) or not e.filename:
            raise  # a bug: keep the traceback
        raise os_error("access", e.filename, e) from None


def _report(result) -> int:
    """The summary lines of a finished run."""
    m = result.manifest
    tok = m["tokenizer"]
    engine = tok["engine"] + (f" (fallback: {tok['fallback_reason']})" if tok["fallback_reason"] else "")
    for out in m["outputs"].values():
        rate = out["tokens"] / max(result.seconds, 1e-9)
        print(
            f"{out['data_path']}: {out['documents']:,} documents, {out['tokens']:,} tokens"
            f" ({out['skipped_empty']:,} empty rows skipped) in {result.seconds:.1f}s, {rate / 1e6:.2f}M tokens/s"
        )
    print(f"engine: {engine}; manifest: {m['manifest']}")
    return 0
