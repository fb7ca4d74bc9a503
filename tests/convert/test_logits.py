"""Our rank files loaded into megatron-core's GPTModel give transformers' logits.

Shapes alone prove nothing (a wrong q/k/v order loads fine), so this compares outputs:
fp32 weights, the same tokens, max abs difference <= 1e-4. megatron-core's parallel state is
process-global, so each TP size runs in freshly spawned processes (one per TP rank, gloo).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from q7x2_runtime.cli import main

from conftest import make_hf
from mcore_cpu import tp_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = {
    # tp: list of (name, tie_word_embeddings, config overrides)
    1: [("untied", False, {}), ("tied", True, {})],
    2: [("untied-kv4-padded-vocab", False, {"num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 255})],
}


@pytest.mark.slow
@pytest.mark.parametrize("tp", sorted(CASES))
def test_mcore_logits_match_transformers(tmp_path: Path, tp: int) -> None:
    from transformers import Qwen2ForCausalLM

    iter_dirs, tokens, expected = [], [], []
    for name, tie, over in CASES[tp]:
        hf = make_hf(tmp_path / name / "hf", tie=tie, dtype=torch.float32, **over)
        mg = tmp_path / name / "mg"
        assert main(["convert", "-i", str(hf), "-o", str(mg), "--tp", str(tp), "--params-dtype", "fp32"]) == 0
        torch.manual_seed(1)
        toks = torch.randint(0, over.get("vocab_size", 256), (2, 24))
        model = Qwen2ForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        with torch.no_grad():
            expected.append(model(toks).logits)
        iter_dirs.append(str(mg / "iter_0000001"))
        tokens.append(toks)
    mp.spawn(tp_worker, args=(tp, _free_port(), iter_dirs, tokens, str(tmp_path)), nprocs=tp, join=True)
    for i, (name, _tie, _over) in enumerate(CASES[tp]):
        want = expected[i]
        for rank in range(tp):
            got = torch.load(tmp_path / f"logits{i}_{rank}.pt")
            if got.shape[:2] != want.shape[:2]:
                got = got.transpose(0, 1)  # [seq, batch, vocab] in some megatron-core versions
            got = got[..., : want.shape[-1]]  # drop padded vocabulary columns
            assert got.shape == want.shape
            diff = (got - want).abs().max().item()
            assert diff <= 1e-4, f"{name}, tp rank {rank}: max abs logits difference {diff}"
