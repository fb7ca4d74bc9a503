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
    if params_dtype and (save_model_type == "mg" or params_dtype != "bf16"):
        argv += ["--params-dtype", params_dtype]  # convert_ckpt.py defaults to fp16, so hf -> mg always says
    return argv


def run_mindspeed_convert(argv: list[str]) -> int:
    root = mindspeed_dir()
    if not Path(root, "convert_ckpt.py").exists():
        raise UserError(f"{root}/convert_ckpt.py not found; set MINDSPEED_LLM_DIR to MindSpeed-LLM's directory or use --engine q7x2")
    print("+ " + " ".join(argv), file=sys.stderr, flush=True)
    proc = subprocess.run(argv, cwd=root)
    if proc.returncode != 0:
        raise UserError(f"MindSpeed-LLM convert_ckpt.py exited with status {proc.returncode}")
    return 0
