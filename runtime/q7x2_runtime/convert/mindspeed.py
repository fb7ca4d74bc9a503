"""The MindSpeed-LLM convert_ckpt.py command line, for images that ship MindSpeed-LLM.

A pure argv builder so a deployment plan can show the exact command before running it.
Flags are those of MindSpeed-LLM 2.0.0's official Qwen2.5 conversion example.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from q7x2_runtime.errors import UserError

DEFAULT_DIR = "/opt/MindSpeed-LLM"


def mindspeed_dir() -> str:
    """MindSpeed-LLM's checkout: $MINDSPEED_LLM_DIR or /opt/MindSpeed-LLM."""
    return os.environ.get("MINDSPEED_LLM_DIR") or DEFAULT_DIR


def mindspeed_convert_argv(
    load_model_type: str,
    save_model_type: str,
    load_dir: str,
    save_dir: str,
    tp: int = 1,
    pp: int = 1,
    num_layer_list: list[int] | None = None,
    params_dtype: str | None = "bf16",
    tokenizer_model: str | None = None,
    python: str = "python",
    mindspeed_llm_dir: str | None = None,
) -> list[str]:
    """argv for MindSpeed-LLM's convert_ckpt.py, to run with cwd = the MindSpeed-LLM dir.

    hf -> mg takes the target TP/PP (which must equal training's). For mg -> hf, --save-dir is
    the original HF folder (MindSpeed-LLM takes config and tokenizer from it and writes the
    weights into a mg2hf/ subdirectory there). MindSpeed-LLM reads tie_word_embeddings from the HF
    config.json itself, so the small tied Qwen2.5 sizes use the same flags.
    """
    root = mindspeed_llm_dir or mindspeed_dir()
    argv = [
        python, f"{root}/convert_ckpt.py",
        "--use-mcore-models",
        "--model-type", "GPT",
        "--load-model-type", load_model_type,
        "--save-model-type", save_model_type,
    ]
    if save_model_type == "mg":
        argv += ["--target-tensor-parallel-size", str(tp), "--target-pipeline-parallel-size", str(pp)]
        if num_layer_list:
            argv += ["--num-layer-list", ",".join(map(str, num_layer_list))]
    else:
        # MindSpeed-LLM's mg -> hf examples pass 1/1 here (the source layout is read from the checkpoint).
        argv += ["--target-tensor-parallel-size", "1", "--target-pipeline-parallel-size", "1"]
    argv += ["--add-qkv-bias", "--load-dir", load_dir, "--save-dir", save_dir]
    if load_model_type == "hf":
        argv += ["--tokenizer-model", tokenizer_model or f"{load_dir.rstrip('/')}/tokenizer.json"]
    argv += ["--model-type-hf", "llama2"]
    if params_dtype:
        # convert_ckpt.py defaults to fp16 in both directions: a bf16 checkpoint read as fp16 loses small values.
        argv += ["--params-dtype", params_dtype]
    return argv


def _flag(argv: list[str], name: str, default: str | None = None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else default


def _whole_safetensors(path: Path) -> bool:
    """A safetensors file whose header reads and whose size covers every tensor it declares."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, struct.error, RecursionError):
        return False


def missing_mg_output(save_dir: Path, tp: int, pp: int) -> list[str]:
    """What a Megatron-format output lacks: the tracker, or rank files absent or cut short."""
    from q7x2_runtime.convert.layout import TRACKER, iteration_dir_name, rank_file, read_latest_iteration
    from q7x2_runtime.pretrain.complete import is_whole_torch_file

    try:
        iteration = read_latest_iteration(save_dir)
    except UserError:
        iteration = None
    if iteration is None:
        return [str(save_dir / TRACKER)]
    iter_dir = save_dir / iteration_dir_name(iteration if iteration else "release")
    if iteration == 0 and not iter_dir.is_dir():
        iter_dir = save_dir / iteration_dir_name(0)
    files = [rank_file(iter_dir, t, p, pp) for p in range(pp) for t in range(tp)]
    return [str(f) for f in files if not is_whole_torch_file(f)]


def missing_hf_output(out_dir: Path) -> list[str]:
    """What an HF output lacks: config.json, the weights, any shard its index names."""
    import json

    missing = [] if (out_dir / "config.json").is_file() else [str(out_dir / "config.json")]
    index = out_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, RecursionError):
            return missing + [f"{index} (unreadable)"]
    elif (out_dir / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        return missing + [str(out_dir / "model.safetensors")]
    return missing + [str(out_dir / s) for s in shards if not _whole_safetensors(out_dir / s)]


def missing_output(argv: list[str]) -> list[str]:
    """What the conversion argv promised and the output directory lacks."""
    save_dir = Path(_flag(argv, "--save-dir") or ".")
    if _flag(argv, "--save-model-type") == "mg":
        tp = int(_flag(argv, "--target-tensor-parallel-size", "1") or 1)
        pp = int(_flag(argv, "--target-pipeline-parallel-size", "1") or 1)
        return missing_mg_output(save_dir, tp, pp)
    # MindSpeed-LLM writes the HF weights into a mg2hf/ subdirectory of --save-dir.
    return missing_hf_output(save_dir / "mg2hf")


def run_mindspeed_convert(argv: list[str]) -> int:
    root = mindspeed_dir()
    if not Path(root, "convert_ckpt.py").exists():
        raise UserError(f"{root}/convert_ckpt.py not found; set MINDSPEED_LLM_DIR to MindSpeed-LLM's directory or use --engine q7x2")
    print("+ " + " ".join(argv), file=sys.stderr, flush=True)
    proc = subprocess.run(argv, cwd=root)
    if proc.returncode != 0:
        raise UserError(f"MindSpeed-LLM convert_ckpt.py exited with status {proc.returncode}")
    # convert_ckpt.py exits 0 even when its saver process died: trust the files, not the status.
    missing = missing_output(argv)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(
            f"MindSpeed-LLM convert_ckpt.py exited 0 but its output is incomplete: missing or cut short "
            f"{', '.join(missing[:3])}{more}; its saver failed, see its output above"
        )
    return 0
