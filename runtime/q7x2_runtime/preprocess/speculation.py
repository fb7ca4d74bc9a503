"""Start tokenizing before transformers has confirmed the engine.

Loading transformers and verifying a tokenizer costs several seconds on one core, while
tokenizer.json alone usually already tells what the fast engine will be. So, on a first
run with a tokenizer, the workers start with the engine read from the file, while a
separate process makes the real decision (`choose_engine`, from what AutoTokenizer builds).
The output is committed only if that decision is exactly the engine used; otherwise it is
discarded and the run starts again with the confirmed engine. Ids therefore never depend
on the guess, only the time does.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

from q7x2_runtime.preprocess.engine_cache import choose_engine_cached
from q7x2_runtime.preprocess.engines import FAST, EngineSpec, _file_sha256, tokenizer_identity
from q7x2_runtime.preprocess.fast_bpe import NotExact, fast_bpe_spec


def _unchecked(model, merged, ranks) -> None:
    """Merge order is left to the confirming decision."""


def candidate_spec(tokenizer_dir: str) -> EngineSpec | None:
    """The fast engine tokenizer.json describes, unverified; None if it describes none."""
    root = Path(tokenizer_dir)
    try:
        data = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
        fast = fast_bpe_spec(data, merge_order=_unchecked)
        config_path = root / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NotExact):
        return None
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    ids = {**data["model"].get("vocab", {}), **{t["content"]: t["id"] for t in data.get("added_tokens") or []}}
    return EngineSpec(
        name=FAST,
        tokenizer_dir=str(tokenizer_dir),
        fast=fast,
        fallback_reason=None,
        eos_token_id=ids.get(eos) if isinstance(eos, str) else None,
        vocab_size=len(ids),
        tokenizer_sha256=tokenizer_identity(tokenizer_dir),
        tokenizer_json_sha256=_file_sha256(root / "tokenizer.json"),
    )


def _decide(tokenizer_dir: str, force: str | None) -> EngineSpec:
    return choose_engine_cached(tokenizer_dir, force)[0]


class Confirmation:
    """The real engine decision, made in its own process (it also fills the cache)."""

    def __init__(self, tokenizer_dir: str, force: str | None) -> None:
        self._pool = mp.get_context("spawn").Pool(1)
        self._result = self._pool.apply_async(_decide, (tokenizer_dir, force))

    def confirmed(self, candidate: EngineSpec, need_eos: bool) -> EngineSpec | None:
        """The decided spec if the candidate is exactly it, else None (UserErrors propagate)."""
        decided = self._result.get()
        same = decided.name == FAST and decided.fast == candidate.fast
        if need_eos and decided.eos_token_id != candidate.eos_token_id:
            same = False
        return decided if same else None

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def __enter__(self) -> Confirmation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
