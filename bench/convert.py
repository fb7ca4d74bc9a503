"""Benchmark `q7x2-runtime convert` against `cp` of the same bytes on the same disk.

Generates a Qwen2.5-7B-shaped HF checkpoint of random bf16 values (4 safetensors shards with
the real key names, config.json, model.safetensors.index.json; 15.2 GB), then times, side by
side in one run: cp of the checkpoint, the HF -> mcore conversion at tp 4 / pp 2, and cp again.
Reports conversion wall time as a ratio to cp (the mean of the two copies) and the converter's
peak RSS. Everything generated is deleted at the end.

    python bench/convert.py                 # 7B, tp 4 / pp 2 (needs ~31 GB free)
    python bench/convert.py --tiny          # a small model, seconds
    python bench/convert.py --back          # also time mcore -> HF (against cp of the mcore files)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from q7x2_runtime.convert.mapping import hf_shapes
from q7x2_runtime.convert.safetensors_out import SafetensorsWriter
from q7x2_runtime.model_dims import ModelDims, preset_dims

TINY = ModelDims(
    num_layers=4, hidden_size=512, ffn_hidden_size=1536, num_attention_heads=8, num_query_groups=4,
    vocab_size=8192, max_position_embeddings=4096, rotary_base=1e6, norm_epsilon=1e-6,
)


def config_json(d: ModelDims) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": d.hidden_size, "intermediate_size": d.ffn_hidden_size, "num_hidden_layers": d.num_layers,
        "num_attention_heads": d.num_attention_heads, "num_key_value_heads": d.num_query_groups,
        "vocab_size": d.vocab_size, "max_position_embeddings": d.max_position_embeddings,
        "rope_theta": d.rotary_base, "rms_norm_eps": d.norm_epsilon, "tie_word_embeddings": not d.untie_embeddings,
        "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151643,
    }


def generate(out: Path, dims: ModelDims, shards: int) -> int:
    """Write the random checkpoint; returns its size in bytes. Values are cycled from a
    pre-generated pool so generation is disk-bound rather than RNG-bound."""
    out.mkdir(parents=True)
    shapes = list(hf_shapes(dims).items())
    total = sum(torch.Size(s).numel() * 2 for _, s in shapes)
    pool = (torch.randn(64 << 20) * 0.02).to(torch.bfloat16)  # 128 MiB
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(shards)]
    acc, per = 0, total / shards
    for name, shape in shapes:
        groups[min(int(acc // per), shards - 1)].append((name, shape))
        acc += torch.Size(shape).numel() * 2
    weight_map, cursor = {}, 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        w = SafetensorsWriter(out / fname, [(n, s, torch.bfloat16) for n, s in group])
        for name, shape in group:
            numel = torch.Size(shape).numel()
            t = torch.empty(numel, dtype=torch.bfloat16)
            done = 0
            while done < numel:
                take = min(numel - done, pool.numel() - cursor)
                t[done : done + take] = pool[cursor : cursor + take]
                done += take
                cursor = (cursor + take) % pool.numel()
            w.write(name, t.view(shape))
            weight_map[name] = fname
        w.finish()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(config_json(dims), indent=2))
    (out / "tokenizer.json").write_text('{"version": "1.0"}')
    return total


def timed(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process; prints its CPU seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} exited with {proc.returncode}")
    print(f"  ({Path(argv[0]).name}: wall {wall:.1f}s, user {usage.ru_utime:.1f}s, sys {usage.ru_stime:.1f}s)", flush=True)
    return wall, usage.ru_maxrss * 1024


def cp_time(src: Path, dst: Path) -> float:
    # cp plus an fsync of the copies: the converter fsyncs its files too, so both pay for durability.
    wall, _ = timed(["sh", "-c", f'cp -r "{src}" "{dst}" && find "{dst}" -type f -exec sync {{}} +'])
    shutil.rmtree(dst)
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small model, runs in seconds")
    ap.add_argument("--tp", type=int, default=None)
    ap.add_argument("--pp", type=int, default=None)
    ap.add_argument("--back", action="store_true", help="also time mcore -> HF")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out")
    args = ap.parse_args()
    dims = TINY if args.tiny else preset_dims("qwen2.5-7b")
    tp, pp = args.tp or (2 if args.tiny else 4), args.pp or 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.workdir))
    exe = [sys.executable, "-m", "q7x2_runtime.cli", "convert"]
    try:
        t0 = time.perf_counter()
        size = generate(work / "hf", dims, 4)
        print(f"generated {size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f}s", flush=True)
        cp1 = cp_time(work / "hf", work / "cp")
        print(f"cp #1: {cp1:.1f}s ({size / cp1 / 1e6:.0f} MB/s)", flush=True)
        conv, rss = timed(exe + ["-i", str(work / "hf"), "-o", str(work / "mg"), "--tp", str(tp), "--pp", str(pp)])
        print(f"convert hf->mg tp{tp}/pp{pp}: {conv:.1f}s ({size / conv / 1e6:.0f} MB/s), peak RSS {rss / 2**30:.2f} GiB", flush=True)
        shutil.rmtree(work / "mg")
        cp2 = cp_time(work / "hf", work / "cp")
        print(f"cp #2: {cp2:.1f}s", flush=True)
        cp_mean = (cp1 + cp2) / 2
        result = {
            "model": "tiny" if args.tiny else "qwen2.5-7b", "tp": tp, "pp": pp, "bytes": size,
            "cp_s": [round(cp1, 2), round(cp2, 2)], "convert_s": round(conv, 2),
            "ratio_to_cp": round(conv / cp_mean, 3), "peak_rss_gib": round(rss / 2**30, 3),
        }
        if args.back:
            # mcore -> HF, compared with cp of the mcore checkpoint. The HF input is deleted
            # first so that at most two copies of the model are on disk at any time.
            conv2, _ = timed(exe + ["-i", str(work / "hf"), "-o", str(work / "mg"), "--tp", str(tp), "--pp", str(pp)])
            shutil.rmtree(work / "hf")
            back, back_rss = timed(exe + ["--from", "mg", "-i", str(work / "mg"), "-o", str(work / "back")])
            print(f"convert mg->hf: {back:.1f}s, peak RSS {back_rss / 2**30:.2f} GiB", flush=True)
            shutil.rmtree(work / "back")
            cp3 = cp_time(work / "mg", work / "cp")
            print(f"cp of the mcore checkpoint: {cp3:.1f}s", flush=True)
            result.update({
                "convert_again_s": round(conv2, 2), "mg_to_hf_s": round(back, 2), "cp_mg_s": round(cp3, 2),
                "mg_to_hf_ratio_to_cp": round(back / cp3, 3), "mg_to_hf_peak_rss_gib": round(back_rss / 2**30, 3),
            })
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
