"""Megatron-mcore checkpoint -> an HF folder transformers loads (config, shards, index, tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from q7x2_runtime.convert.ckpt_args import params_dtype
from q7x2_runtime.convert.hf_source import INDEX, config_dims, read_config
from q7x2_runtime.convert.mapping import hf_shapes
from q7x2_runtime.convert.mcore_source import McoreCheckpoint
from q7x2_runtime.convert.output import AtomicDir, check_free_space
from q7x2_runtime.convert.safetensors_out import SafetensorsWriter
from q7x2_runtime.convert.sink import HashedFile, Worker
from q7x2_runtime.errors import UserError
from q7x2_runtime.model_dims import ModelDims
from q7x2_runtime.progress import ByteProgress

# Files an HF model folder needs besides weights; copied from the template when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
)
_TORCH_DTYPE_NAME = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def hf_config(dims: ModelDims, dtype: torch.dtype, template: dict[str, Any] | None, template_path: Path | None = None) -> dict[str, Any]:
    """The template's config.json (checked against the checkpoint) or one built from the dims."""
    if template is not None:
        tdims = config_dims(template, template_path or Path("template config.json"))
        for field in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "vocab_size", "untie_embeddings"):
            if getattr(tdims, field) != getattr(dims, field):
                raise UserError(
                    f"template config.json has {field}={getattr(tdims, field)} but the checkpoint has "
                    f"{getattr(dims, field)}; give the HF folder of the same model size"
                )
        cfg = dict(template)
    else:
        cfg = {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "hidden_size": dims.hidden_size,
            "intermediate_size": dims.ffn_hidden_size,
            "num_hidden_layers": dims.num_layers,
            "num_attention_heads": dims.num_attention_heads,
            "num_key_value_heads": dims.num_query_groups,
            "vocab_size": dims.vocab_size,
            "max_position_embeddings": dims.max_position_embeddings,
            "rope_theta": dims.rotary_base,
            "rms_norm_eps": dims.norm_epsilon,
            "tie_word_embeddings": not dims.untie_embeddings,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": True,
            "use_sliding_window": False,
            "bos_token_id": 151643,
            "eos_token_id": 151643,
        }
    cfg["torch_dtype"] = _TORCH_DTYPE_NAME[dtype]
    if "dtype" in cfg:  # transformers >= 5 writes this name and prefers it
        cfg["dtype"] = _TORCH_DTYPE_NAME[dtype]
    return cfg


def shard_plan(names: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, max_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    elem = torch.empty((), dtype=dtype).element_size()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in names:
        n = elem
        for d in shape:
            n *= d
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return shards


def _write_hashed(dst: Path, data: bytes) -> tuple[str, int]:
    out = HashedFile(dst)
    out.write(data)
    out.close()
    assert out.sha256 is not None, "close() sets the digest"
    return out.sha256, len(data)


def _copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    out = HashedFile(dst)
    try:
        with open(src, "rb") as f:
            while chunk := f.read(16 << 20):
                out.write(chunk)
    except BaseException:
        out.abort()
        raise
    out.close()
    assert out.sha256 is not None, "close() sets the digest"
    return out.sha256, dst.stat().st_size


def convert_mcore_to_hf(
    load_dir: Path,
    save_dir: Path,
    iteration: int | None = None,
    dtype_name: str | None = None,
    template_dir: Path | None = None,
    force: bool = False,
    max_shard_bytes: int = 5 * 10**9,
) -> Path:
    ckpt = McoreCheckpoint(load_dir, iteration)
    dims = ckpt.dims
    dtype = params_dtype(dtype_name) if dtype_name else ckpt.dtype()
    if template_dir is None:
        # hf -> mcore records the HF folder it came from (as Megatron's tokenizer path).
        recorded = getattr(ckpt.args, "tokenizer_name_or_path", None)
        try:
            if recorded and Path(recorded).is_dir():
                template_dir = Path(recorded)
        except OSError:
            pass  # not readable from here: convert without it, as when it no longer exists
    template_cfg = None
    if template_dir is not None:
        if not template_dir.is_dir():
            raise UserError(f"{template_dir}: --hf-template/--tokenizer directory does not exist")
        if (template_dir / "config.json").exists():
            template_cfg = read_config(template_dir, "--hf-template")
    config = hf_config(dims, dtype, template_cfg, template_dir / "config.json" if template_dir else None)

    shapes = hf_shapes(dims)
    shards = shard_plan(list(shapes.items()), dtype, max_shard_bytes)
    total = sum(torch.empty((), dtype=dtype).element_size() * torch.Size(s).numel() for s in shapes.values())
    check_free_space(save_dir, total + (1 << 20))
    n = len(shards)
    shard_of = {name: i for i, shard in enumerate(shards) for name, _ in shard}
    file_names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    with AtomicDir(save_dir, force, describe="HF output directory") as out:
        out.meta = {"format": "hf-safetensors", "source": str(ckpt.iter_dir)}
        worker = Worker()
        writers: list[SafetensorsWriter | None] = [None] * n
        progress = ByteProgress("convert mcore -> hf", total)
        elsize = torch.empty((), dtype=dtype).element_size()
        try:
            for _unit, hf_parts in ckpt.units(dtype):
                for name, parts in hf_parts.items():
                    i = shard_of[name]
                    if writers[i] is None:
                        writers[i] = SafetensorsWriter(out.path / file_names[i], [(nm, sh, dtype) for nm, sh in shards[i]], worker)
                    w = writers[i]
                    assert w is not None
                    w.write(name, parts)  # hashing and writing happen on the worker's threads
                    progress.advance(elsize * torch.Size(shapes[name]).numel())
                    if name == shards[i][-1][0]:
                        w.finish()
                del hf_parts, parts
            worker.drain()
        except BaseException:
            for w in writers:
                if w is not None:
                    w.abort()
            raise
        finally:
            progress.close()
            worker.close()
        for fname, writer in zip(file_names, writers):
            assert writer is not None, "every shard holds at least one tensor"
            out.add(fname, writer.sha256, (out.path / fname).stat().st_size)
        index = {"metadata": {"total_size": total}, "weight_map": {name: file_names[shard_of[name]] for name in shapes}}
        for fname, payload in ((INDEX, index), ("config.json", config)):
            out.add(fname, *_write_hashed(out.path / fname, (json.dumps(payload, indent=2) + "\n").encode()))
        if template_dir is not None:
            for fname in TOKENIZER_FILES:
                if (template_dir / fname).is_file():
                    out.add(fname, *_copy_hashed(template_dir / fname, out.path / fname))
    return save_dir
