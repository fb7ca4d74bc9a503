"""Write the sample: a tiny Qwen2.5 checkpoint with its tokenizer, and an alpaca-shaped parquet.

The same bytes on every run, and written atomically: everything goes into a temporary sibling
directory that replaces the target with a rename, so a reader never sees half a sample.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from q7x2_runtime.errors import UserError
from q7x2_runtime.sample.corpus import alpaca_rows, tokenizer_training_text
from q7x2_runtime.sample.tokenizer import special_token_ids, train_tokenizer, write_tokenizer
from q7x2_runtime.sample.weights import TinyDims, hf_config, hf_tensor_shapes, random_weights, write_sharded

WEIGHT_SEED = 1234
# Entries a previous sample leaves in its directory; anything else means the directory is not ours.
_OWN_ENTRIES = {"model", "data"}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _write_model(out: Path, dims: TinyDims) -> None:
    tok = train_tokenizer(tokenizer_training_text())
    # A multiple of 128 divides by every TP size a tiny model can use (kv heads limit TP to 1-2).
    vocab_size = _round_up(tok.get_vocab_size(), 128)
    eos_id = special_token_ids(tok)["<|endoftext|>"]
    out.mkdir(parents=True)
    write_tokenizer(tok, out, model_max_length=dims.max_position_embeddings)
    config = hf_config(dims, vocab_size, eos_id)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    gen = {"bos_token_id": eos_id, "eos_token_id": eos_id, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    weights = random_weights(dims, vocab_size, WEIGHT_SEED)
    write_sharded(weights, [k for k, _ in hf_tensor_shapes(dims, vocab_size)], out, num_shards=2)


def _write_data(out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = alpaca_rows()
    cols = ("instruction", "input", "output", "text")
    table = pa.table({c: pa.array([r[c] for r in rows], type=pa.string()) for c in cols})
    out.mkdir(parents=True)
    # No statistics-free surprises: fixed writer settings keep the file byte-identical.
    pq.write_table(table, out / "alpaca.parquet", compression="snappy", write_statistics=False, use_dictionary=False)


def _make_readable(root: Path) -> None:
    # Some writers create 0600 files; containers may read the sample as another user.
    os.chmod(root, 0o755)
    for p in sorted(root.rglob("*")):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory; choose another sample directory")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _OWN_ENTRIES)
    if foreign:
        raise UserError(f"{out_dir} holds {', '.join(foreign[:3])}, not a sample; choose an empty or new directory")


def make_sample(out_dir: Path) -> None:
    """Write out_dir/model/ (HF checkpoint + tokenizer) and out_dir/data/alpaca.parquet."""
    out_dir = Path(out_dir).absolute()
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_model(tmp / "model", TinyDims())
        _write_data(tmp / "data")
        _make_readable(tmp)
        if out_dir.exists():
            # Swap in two renames; the old copy is removed only after the new one is in place.
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
