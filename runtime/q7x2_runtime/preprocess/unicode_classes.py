"""Do HF's regex engine (Oniguruma) and tiktoken's (fancy-regex) classify characters alike?

The fast path's pre-tokenization runs the same split regex in tiktoken that HF runs in
Oniguruma. They agree only if both libraries put every code point in the same \\p{L},
\\p{N} and \\s classes and case-fold the contraction letters alike; Unicode versions move,
so this is checked for the installed versions (about a CPU-second per class, over all
1.1M code points) and the verdict is kept per pair of library versions: recorded once by the
image build (`q7x2-runtime doctor --record`), so a new container's first preprocess does not
pay for it, else in the user's cache on the first run.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

from q7x2_runtime.preprocess.cache import installation_root

# What the known split regexes depend on
CLASSES = (r"\p{L}", r"\p{N}", r"\s", r"(?i:[strevmld])")


def disagreement(pattern: str) -> str | None:
    """None if both engines match `pattern` on exactly the same code points."""
    import tiktoken
    from tokenizers import Regex, pre_tokenizers

    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    kept = "".join(p for p, _ in pre_tokenizers.Split(Regex(pattern), behavior="removed").pre_tokenize_str(text))
    hf = set(text) - set(kept)
    # A byte-only vocabulary: the encoded bytes are exactly the matched characters.
    enc = tiktoken.Encoding("q7x2-class-probe", pat_str=pattern, mergeable_ranks={bytes([b]): b for b in range(256)}, special_tokens={})
    tt = set(enc.decode_bytes(enc.encode_ordinary(text)).decode("utf-8"))
    diff = sorted(hf ^ tt)
    if diff:
        return f"HF and tiktoken disagree on {pattern} for {len(diff)} code points (e.g. U+{ord(diff[0]):04X})"
    return None


def compute() -> str | None:
    """The first class the two engines disagree on, or None: about a CPU-second per class."""
    return next((r for r in map(disagreement, CLASSES) if r), None)


def _verdict_path(root: Path) -> Path:
    versions = []
    for lib in ("tokenizers", "tiktoken"):
        try:
            versions.append(f"{lib}-{metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{lib}-none")
    return root / "unicode-classes" / ("_".join(versions) + ".json")


def cached_verdict(cache_root: Path | None) -> tuple[bool, str | None]:
    """(known, reason-or-None): the image build's record first, then the user's cache.
    No cache (Q7X2_PREPROCESS_CACHE=0) means neither: the verdict is computed afresh."""
    if cache_root is None:
        return False, None
    for path in (_verdict_path(installation_root()), _verdict_path(cache_root)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "disagreement" in data:
            return True, data["disagreement"]
    return False, None


def _write_verdict(path: Path, reason: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"disagreement": reason}))
    os.replace(tmp, path)  # a reader never sees half a verdict


def store_verdict(cache_root: Path | None, reason: str | None) -> None:
    if cache_root is None:
        return
    try:
        _write_verdict(_verdict_path(cache_root), reason)
    except OSError:
        pass  # an unwritable cache only costs the next run the same check


def record_installation() -> tuple[Path, str | None]:
    """Compute the verdict for the installed libraries and record it for every container of
    this image; raises OSError when the record cannot be written (the build must fail then)."""
    reason = compute()
    path = _verdict_path(installation_root())
    _write_verdict(path, reason)
    return path, reason


def check(cache_root: Path | None) -> str | None:
    """The verdict for the installed libraries, computed here if not known yet."""
    known, reason = cached_verdict(cache_root)
    if known:
        return reason
    reason = compute()
    store_verdict(cache_root, reason)
    return reason
