"""On-disk cache of engine decisions, so a re-run with the same tokenizer starts at once.

Choosing an engine costs seconds (importing transformers, verifying ~150k merges, probing);
the answer depends only on the tokenizer files and the library versions, which form the
key. Stored as JSON (never pickle: the cache directory may be shared).
Disable with Q7X2_PREPROCESS_CACHE=0; relocate with Q7X2_CACHE_DIR.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable

from q7x2_runtime.debris import pid_gone
from q7x2_runtime.errors import UserError
from q7x2_runtime.preprocess.cache import cache_root
from q7x2_runtime.preprocess.engines import EngineChecks, EngineSpec, choose_engine, tokenizer_identity
from q7x2_runtime.preprocess.fast_bpe import FastBpeSpec

_FORMAT = "q7x2-engine-cache-2"
_LIBRARIES = ("transformers", "tokenizers", "tiktoken")


def cache_dir() -> Path | None:
    root = cache_root()
    return None if root is None else root / "preprocess-engine"


@functools.cache
def _rule_code() -> bytes:
    """The module files themselves: a changed rule must not reuse an old verdict (read once
    per process: an installed module does not change under a running one)."""
    here = Path(__file__).parent
    return b"".join((here / name).read_bytes() for name in ("fast_bpe.py", "engines.py", "bytelevel.py", "unicode_classes.py", "nfc_inert.py", "nfc_inert_ranges.py"))


def cache_key(tokenizer_sha256: str, force: str | None) -> str:
    from importlib import metadata  # 25 ms of imports: only once a decision may be stored or read

    versions = []
    for lib in _LIBRARIES:
        try:
            versions.append(f"{lib}={metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{lib}=none")
    material = "\n".join([_FORMAT, tokenizer_sha256, str(force), *versions]).encode() + _rule_code()
    return hashlib.sha256(material).hexdigest()


def load(key: str, tokenizer_dir: str) -> EngineSpec | None:
    d = cache_dir()
    if d is None:
        return None
    try:
        data = json.loads((d / f"{key}.json").read_text(encoding="utf-8"))
        fast = data.pop("fast")
        if fast is not None:
            fast = FastBpeSpec(
                pattern=fast["pattern"],
                pattern_name=fast["pattern_name"],
                nfc=fast["nfc"],
                ranks=_ranks_from(fast["ranks"]),
                added_tokens=fast["added_tokens"],
                normalized_added_tokens=fast["normalized_added_tokens"],
            )
        return EngineSpec(fast=fast, **{**data, "tokenizer_dir": str(tokenizer_dir)})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or unreadable: decide afresh


def store(key: str, spec: EngineSpec) -> None:
    d = cache_dir()
    if d is None:
        return
    data = {k: getattr(spec, k) for k in spec.__dataclass_fields__ if k != "fast"}
    f = spec.fast
    data["fast"] = None if f is None else {
        "pattern": f.pattern,
        "pattern_name": f.pattern_name,
        "nfc": f.nfc,
        "ranks": _ranks_to(f.ranks),
        "added_tokens": f.added_tokens,
        "normalized_added_tokens": f.normalized_added_tokens,
    }
    try:
        d.mkdir(parents=True, exist_ok=True)
        _remove_dead_temporaries(d)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".tmp-{os.getpid()}-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            # dumps, not dump: only the one-shot encoder is json's C one (0.02 s here, 0.11 s)
            out.write(json.dumps(data, ensure_ascii=False))
        os.replace(tmp, d / f"{key}.json")
    except OSError:
        pass  # a read-only home only costs the next run its start-up time


def _ranks_to(ranks: dict[bytes, int]) -> dict[str, object]:
    """~150k ranks as three flat members, not an object of 150k keys: a tenth of the time to
    write and to read. The tokens' bytes back to back, spelled in latin-1 (one code point per
    byte, lossless), then each token's length and rank."""
    return {
        "bytes": b"".join(ranks).decode("latin-1"),
        "lengths": list(map(len, ranks)),
        "ranks": list(ranks.values()),
    }


def _ranks_from(flat: dict[str, Any]) -> dict[bytes, int]:
    data = flat["bytes"].encode("latin-1")
    lengths, values = flat["lengths"], flat["ranks"]
    if len(lengths) != len(values) or sum(lengths) != len(data) or not all(type(v) is int for v in values):
        raise ValueError("cached ranks do not add up")
    ends = list(accumulate(lengths))
    ranks = dict(zip(map(data.__getitem__, map(slice, [0, *ends[:-1]], ends)), values))
    if len(ranks) != len(values):
        raise ValueError("cached ranks repeat a token")
    return ranks


def _remove_dead_temporaries(d: Path) -> None:
    """A run killed while storing its decision leaves `.tmp-PID-*.json`; remove those whose
    writer is gone (a live run's are its own business)."""
    for tmp in d.glob(".tmp-*-*.json"):
        pid = tmp.name.split("-", 2)[1]
        if pid.isdigit() and pid_gone(int(pid), tmp):
            tmp.unlink(missing_ok=True)


def _holds_decisions(d: Path | None) -> bool:
    """Could `d` hold any decision? In a new container it does not even exist: then no key
    (a hash of the tokenizer files, the libraries' versions) is computed to look one up."""
    try:
        return d is not None and any(d.glob("*.json"))
    except OSError:
        return True  # let the lookup itself say what is wrong


def has_decision(tokenizer_dir: str, force: str | None = None) -> bool:
    """Is a decision stored for this tokenizer (without reading it)?"""
    d = cache_dir()
    if not _holds_decisions(d):
        return False
    assert d is not None
    return (d / f"{cache_key(tokenizer_identity(tokenizer_dir), force)}.json").is_file()


def cached_engine(tokenizer_dir: str, force: str | None = None) -> EngineSpec | None:
    """The remembered decision for this tokenizer, or None."""
    if not Path(tokenizer_dir).is_dir():
        raise UserError(f"tokenizer directory {tokenizer_dir} does not exist")
    if not _holds_decisions(cache_dir()):
        return None
    return load(cache_key(tokenizer_identity(tokenizer_dir), force), tokenizer_dir)


def choose_engine_cached(
    tokenizer_dir: str, force: str | None = None, checks: Callable[[], EngineChecks] | None = None
) -> tuple[EngineSpec, bool]:
    """(spec, came from the cache): `choose_engine`, remembered per tokenizer and versions.

    `checks` is called only when the engine must really be chosen."""
    spec = cached_engine(tokenizer_dir, force)
    if spec is not None:
        return spec, True
    key = cache_key(tokenizer_identity(tokenizer_dir), force)
    spec = choose_engine(tokenizer_dir, force=force, checks=checks() if checks else None)
    store(key, spec)
    return spec, False
