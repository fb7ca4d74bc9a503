"""`q7x2-runtime convert`: HF <-> Megatron-mcore checkpoints with TP/PP.

Flags follow MindSpeed-LLM's convert_ckpt.py where they overlap, so its command lines work here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from q7x2_runtime.errors import UserError
from q7x2_runtime.os_errors import is_environmental, os_error


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert checkpoints between HF safetensors and Megatron-mcore (TP/PP)",
        description=__doc__,
    )
    p.add_argument("--load-model-type", "--from", dest="load_model_type", choices=("hf", "mg"), default="hf")
    p.add_argument("--save-model-type", "--to", dest="save_model_type", choices=("mg", "hf"), default=None,
                   help="default: the other of --load-model-type")
    p.add_argument("--load-dir", "-i", required=True, type=Path, help="HF folder, or Megatron save dir")
    p.add_argument("--save-dir", "-o", required=True, type=Path, help="output directory (created atomically)")
    p.add_argument("--target-tensor-parallel-size", "--tp", dest="tp", type=int, default=1)
    p.add_argument("--target-pipeline-parallel-size", "--pp", dest="pp", type=int, default=1)
    p.add_argument("--num-layer-list", type=_int_list, default=None, help="layers per pipeline stage, e.g. 11,13,19,21")
    p.add_argument("--params-dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="hf->mg default bf16; mg->hf default: the checkpoint's dtype")
    p.add_argument("--iteration", type=int, default=None, help="mg->hf: iteration to read (default: latest)")
    p.add_argument("--hf-template", "--tokenizer", dest="hf_template", type=Path, default=None,
                   help="mg->hf: HF folder to take config.json and tokenizer files from "
                        "(default: the HF folder the checkpoint was converted from, if it still exists)")
    p.add_argument("--only-stage", type=_int_list, default=None, help="hf->mg: write only these pipeline stages")
    p.add_argument("--only-ranks", type=_int_list, default=None, help="hf->mg: write only these tensor-parallel ranks")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--skip-existing", action="store_true",
                   help="hf->mg: succeed without work when the output is a finished conversion of the same "
                        "checkpoint with the same settings (re-running a job)")
    p.add_argument("--engine", choices=("q7x2", "mindspeed"), default="q7x2",
                   help="mindspeed: run MindSpeed-LLM's convert_ckpt.py ($MINDSPEED_LLM_DIR, default /opt/MindSpeed-LLM)")
    # convert_ckpt.py flags people type out of habit; accepted and ignored (the model is
    # always a Qwen2 GPT with qkv bias, read from config.json).
    p.add_argument("--use-mcore-models", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-type", default=None, help=argparse.SUPPRESS)
    p.add_argument("--add-qkv-bias", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-type-hf", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer-model", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _refuse_overlap(load_dir: Path, save_dir: Path, template: Path | None) -> None:
    """Writing into (or replacing) the input would destroy it: refuse before touching anything."""
    load, save = load_dir.resolve(), save_dir.resolve()
    if save == load:
        raise UserError(f"--save-dir {save_dir} is the --load-dir itself; writing it would destroy the input: choose another --save-dir")
    if load in save.parents:
        raise UserError(f"--save-dir {save_dir} is inside --load-dir {load_dir}; choose a --save-dir outside the input")
    if save in load.parents:
        raise UserError(f"--save-dir {save_dir} contains --load-dir {load_dir}; replacing it would destroy the input: choose another --save-dir")
    if template is not None:
        tpl = template.resolve()
        if tpl == save or save in tpl.parents:
            raise UserError(f"--hf-template {template} is inside --save-dir {save_dir}; it would be replaced while being read")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except OSError as e:
        if not is_environmental(e) or not e.filename:
            raise  # a bug: keep the traceback
        raise os_error("access", e.filename, e) from None


def _run(args: argparse.Namespace) -> int:
    save_type = args.save_model_type or ("mg" if args.load_model_type == "hf" else "hf")
    if save_type == args.load_model_type:
        raise UserError(f"--load-model-type and --save-model-type are both {save_type}; nothing to convert")
    if args.model_type not in (None, "GPT"):
        raise UserError(f"--model-type {args.model_type}: only GPT (Qwen2) models are supported")
    _refuse_overlap(args.load_dir, args.save_dir, args.hf_template)
    if args.engine == "mindspeed":
        from q7x2_runtime.convert.mindspeed import mindspeed_convert_argv, run_mindspeed_convert

        argv = mindspeed_convert_argv(
            args.load_model_type, save_type, str(args.load_dir), str(args.save_dir), args.tp, args.pp,
            args.num_layer_list, args.params_dtype or ("bf16" if save_type == "mg" else None), args.tokenizer_model,
            python=sys.executable,
        )
        return run_mindspeed_convert(argv)
    start = time.monotonic()
    if save_type == "mg":
        from q7x2_runtime.convert.to_mcore import convert_hf_to_mcore, existing_conversion_matches

        force = args.force
        if args.skip_existing and not args.force:
            found = existing_conversion_matches(
                args.load_dir, args.save_dir, args.tp, args.pp, args.num_layer_list, args.params_dtype or "bf16",
                args.only_stage, args.only_ranks,
            )
            if found is True:
                print(f"{args.save_dir}: already a finished conversion of {args.load_dir} with these settings "
                      "(every file's size and sha256 checked); skipped", file=sys.stderr)
                return 0
            if found:
                # Our own conversion with these very settings, damaged since: redo it.
                print(f"{args.save_dir}: a finished conversion with these settings, but {found}; converting again", file=sys.stderr)
                force = True
        out = convert_hf_to_mcore(
            args.load_dir, args.save_dir, args.tp, args.pp, args.num_layer_list, args.params_dtype or "bf16",
            force, args.only_stage, args.only_ranks,
        )
    else:
        if args.only_stage or args.only_ranks:
            raise UserError("--only-stage/--only-ranks apply to hf->mg only")
        from q7x2_runtime.convert.to_hf import convert_mcore_to_hf

        out = convert_mcore_to_hf(
            args.load_dir, args.save_dir, args.iteration, args.params_dtype, args.hf_template, args.force,
        )
    print(f"converted {args.load_dir} -> {out} ({save_type}) in {time.monotonic() - start:.1f}s", file=sys.stderr)
    return 0
