"""Tokenizer engines: tiktoken's BPE core when it is provably exact, HF otherwise.

`choose_engine` runs once in the parent process: it loads the tokenizer the way MindSpeed
does (`AutoTokenizer.from_pretrained`), inspects the pipeline transformers actually built
(not just the file: transformers may replace components), checks the fast path's
preconditions, then compares both engines on hostile probe texts. Workers receive the
resulting `EngineSpec` and build their engine from it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import re
import stat
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from q7x2_runtime.errors import UserError
from q7x2_runtime.os_errors import present, regular_file
from q7x2_runtime.preprocess.fast_bpe import FastBpeSpec, MergeOrderCheck, NotExact, fast_bpe_spec

if TYPE_CHECKING:  # numpy is imported where ids are produced, not by the confirming process
    import numpy as np

FAST = "tiktoken-bpe"
HF = "hf-tokenizers"

# Texts on which the two engines must agree before the fast one is trusted; the added
# tokens of the tokenizer are mixed in at load time.
_PROBES = (
    "",
    "Hello, world! It's 2024; we'll see—don't panic. I'M HERE, you'RE there, 'S 'T 'ſ",
    "  leading and trailing spaces   \n\n\n\t\ttabs\r\nCRLF \u00a0nbsp\u3000ideographic ",
    "数字 12345 ６７８ ½ ⅷ 中文字符测试，标点。日本語のテキスト 한국어 텍스트 Ελληνικά Русский",
    "emoji 😀👍🏽👨‍👩‍👧 flags 🇺🇸 zwj\u200d keycap 1\ufe0f\u20e3",
    "NFD: e\u0301 a\u0308 o\u0302 \u1100\u1161\u11a8 Å Ω ﬁ ẞ",
    " " * 40 + "x" + "\n" * 7 + " " * 3,
    "code:\n    def f(x):\n        return x**2  # comment\n\n",
    "مرحبا بالعالم हिन्दी ภาษาไทย",
)


class Engine(Protocol):
    name: str

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, exactly as `AutoTokenizer(...)(text)["input_ids"]`."""
        ...

    def encode_flat(self, texts: list[str], eod: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The same ids back to back as int32 (`eod` after each text unless None), and each
        text's count of ids as int64."""
        ...


def flatten(docs: Iterable[list[int]], eod: int | None) -> tuple[np.ndarray, np.ndarray]:
    """`Engine.encode_flat` from lists of ids."""
    import numpy as np

    flat = array("i")
    lengths = array("q")
    for ids in docs:
        if eod is not None:
            ids.append(eod)
        flat.extend(ids)
        lengths.append(len(ids))
    return (
        np.frombuffer(flat, dtype=np.int32) if flat else np.zeros(0, np.int32),
        np.frombuffer(lengths, dtype=np.int64) if lengths else np.zeros(0, np.int64),
    )


# A special token no call ever allows. tiktoken's `encode_to_tiktoken_buffer(text, allowed=∅)`
# then splits and merges exactly like `encode_ordinary` (a special token that is not allowed
# is plain text to it), but returns the ids as one buffer instead of a list of Python ints:
# on alpaca that is a quarter of the tokenizing CPU. (With no special token at all, tiktoken's
# special-token regex would be empty and match at every position.)
_NEVER_ALLOWED = "<|q7x2: a special token never allowed|>"
_NONE_ALLOWED: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to run and how to build it; picklable, sent to every worker."""

    name: str
    tokenizer_dir: str
    fast: FastBpeSpec | None
    fallback_reason: str | None
    eos_token_id: int | None
    vocab_size: int
    tokenizer_sha256: str  # all files that decide the ids
    tokenizer_json_sha256: str | None


@dataclass
class EngineChecks:
    """Checks `choose_engine` may get from elsewhere (e.g. already running in worker
    processes); None runs them here."""

    merge_order: MergeOrderCheck | None = None
    unicode_classes: Callable[[], str | None] | None = None  # disagreement reason or None


class FastBpeEngine:
    """Added-token split + NFC + tiktoken's CoreBPE, mirroring HF's pipeline order."""

    name = FAST

    def __init__(self, spec: FastBpeSpec) -> None:
        import tiktoken
        from tokenizers import normalizers

        never_id = max(spec.ranks.values(), default=0) + 1  # unused: the token is never allowed
        self._encoding = tiktoken.Encoding(
            "q7x2-fast-bpe", pat_str=spec.pattern, mergeable_ranks=spec.ranks, special_tokens={_NEVER_ALLOWED: never_id}
        )
        self._encode = self._encoding.encode_ordinary
        self._encode_buffer = self._encoding._core_bpe.encode_to_tiktoken_buffer
        # HF's own NFC, so normalization follows the same Unicode tables as HF; skipped for
        # text NFC provably leaves alone (nfc_inert: most non-ASCII text, at a tenth of the cost).
        self._nfc = normalizers.NFC().normalize_str if spec.nfc else None
        self._needs_nfc = _needs_nfc() if spec.nfc else None
        self._added = {**spec.added_tokens, **spec.normalized_added_tokens}
        self._raw_re = _alternation(spec.added_tokens)
        self._normalized_re = _alternation(spec.normalized_added_tokens)

    def encode_one(self, text: str) -> list[int]:
        """HF's order: split raw added tokens, normalize each piece, split normalized added
        tokens, then BPE what remains."""
        return self._split(text, self._raw_re, self._normalized_piece)

    def _normalized(self, text: str) -> str:
        if self._nfc is None or self._needs_nfc is None or text.isascii() or not self._needs_nfc(text):
            return text
        return self._nfc(text)

    def _normalized_piece(self, text: str) -> list[int]:
        text = self._normalized(text)
        return self._split(text, self._normalized_re, self._encode)

    def _split(self, text: str, added_re: re.Pattern | None, inner) -> list[int]:
        if added_re is None or not added_re.search(text):
            return inner(text)
        ids: list[int] = []
        pos = 0
        for m in added_re.finditer(text):
            if m.start() > pos:
                ids += inner(text[pos : m.start()])
            ids.append(self._added[m.group()])
            pos = m.end()
        if pos < len(text):
            ids += inner(text[pos:])
        return ids

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [self.encode_one(t) for t in texts]

    def encode_array(self, text: str) -> np.ndarray:
        """`encode_one` as a uint32 array, built without a list for text with no added token."""
        import numpy as np

        return np.frombuffer(self._buffer(text), dtype=np.uint32)

    def _buffer(self, text: str) -> memoryview:
        """`encode_one`'s ids as uint32 in native byte order."""
        if self._raw_re is None or not self._raw_re.search(text):
            piece = self._normalized(text)
            if self._normalized_re is None or not self._normalized_re.search(piece):
                try:
                    return memoryview(self._encode_buffer(piece, _NONE_ALLOWED))
                except UnicodeEncodeError:
                    pass  # lone surrogates: encode_ordinary's own replacement below
        # From the raw text: raw added tokens are matched before normalization, never after.
        return memoryview(array("I", self.encode_one(text)))

    def encode_flat(self, texts: list[str], eod: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The documents' ids back to back (each followed by `eod`, if given) and their lengths:
        the ids buffers joined in one call, not one array per document concatenated."""
        import numpy as np

        parts = list(map(self._buffer, texts))
        lengths = np.fromiter(map(_NBYTES, parts), dtype=np.int64, count=len(parts)) // 4
        if eod is not None and parts:
            end = array("I", [eod]).tobytes()
            data = end.join(parts) + end
            lengths += 1
        else:
            data = b"".join(parts)
        return np.frombuffer(data, dtype=np.int32), lengths


_NBYTES = operator.attrgetter("nbytes")


@functools.cache
def _needs_nfc() -> Callable[[str], re.Match | None]:
    """Finds a character NFC may change (nfc_inert); compiled once per process."""
    from q7x2_runtime.preprocess.nfc_inert import needs_nfc_search
    from q7x2_runtime.preprocess.nfc_inert_ranges import INERT_RANGES

    return needs_nfc_search(list(INERT_RANGES))


def _alternation(tokens: dict[str, int]) -> re.Pattern | None:
    # Longest first makes Python's leftmost-first alternation behave like HF's
    # leftmost-longest added-token matching.
    ordered = sorted(tokens, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


class HfEngine:
    """The reference: transformers' tokenizer called exactly as MindSpeed calls it."""

    name = HF

    def __init__(self, tokenizer_dir: str, loaded: Any = None) -> None:
        """`loaded`: the AutoTokenizer of `tokenizer_dir`, if this process has it already."""
        self._tok = loaded if loaded is not None else load_auto_tokenizer(tokenizer_dir)

    def encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return list(self._tok(texts)["input_ids"])

    def encode_flat(self, texts: list[str], eod: int | None) -> tuple[np.ndarray, np.ndarray]:
        return flatten(self.encode(texts), eod)


def engine_choice(flag: str) -> str | None:
    """--engine auto | fast | hf as the `force` of choose_engine."""
    return {"auto": None, "fast": FAST, "hf": HF}[flag]


def check_tokenizer_dir(path: Path) -> None:
    """The tokenizer directory and the files transformers reads from it must be regular files:
    a FIFO would block the loader forever."""
    if not present(path, "tokenizer directory"):
        raise UserError(f"--tokenizer-name-or-path {path}: no such tokenizer directory")
    if not path.is_dir():
        raise UserError(f"--tokenizer-name-or-path {path}: not a directory (give the HF tokenizer directory)")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json", "config.json"):
        if present(path / name, "tokenizer file"):
            regular_file(path / name, "tokenizer file", 1 << 30)


def build_engine(spec: EngineSpec) -> Engine:
    if spec.name == FAST and spec.fast is not None:
        return FastBpeEngine(spec.fast)
    return HfEngine(spec.tokenizer_dir)


def load_auto_tokenizer(tokenizer_dir: str):  # -> transformers.PreTrainedTokenizerBase
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from q7x2_runtime.preprocess import import_structure

    with import_structure.for_this_process():  # a first import reads no model file it need not
        from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the tokenizer from {tokenizer_dir}: {first}") from None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
# sha256s already computed in this process, by the files' stat signatures: a run asks for the
# same 16 MB of tokenizer files several times (cache lookups, candidate, manifest); any write
# changes a file's ctime, so a changed file is hashed again.
_HASHED: dict[tuple, str] = {}


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _memo_sha256(paths: list[Path], compute: Callable[[], str]) -> str:
    key = tuple(map(_signature, paths))
    if key not in _HASHED:
        _HASHED[key] = compute()
    return _HASHED[key]


def tokenizer_identity(tokenizer_dir: str) -> str:
    """sha256 over the tokenizer files that decide the ids (tokenizer.json first)."""
    paths = [Path(tokenizer_dir) / name for name in _TOKENIZER_FILES]

    def compute() -> str:
        h = hashlib.sha256()
        for name, p in zip(_TOKENIZER_FILES, paths):
            if p.is_file():
                h.update(name.encode() + b"\0")
                h.update(p.read_bytes())
        return h.hexdigest()

    return _memo_sha256(paths, compute)


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    return _memo_sha256([path], lambda: hashlib.sha256(path.read_bytes()).hexdigest())


def choose_engine(tokenizer_dir: str, *, force: str | None = None, checks: EngineChecks | None = None) -> EngineSpec:
    """Load the tokenizer, decide fast or HF, and prove the fast one on probe texts."""
    if not Path(tokenizer_dir).is_dir():
        raise UserError(f"tokenizer directory {tokenizer_dir} does not exist")
    tok = load_auto_tokenizer(tokenizer_dir)
    common = dict(
        tokenizer_dir=str(tokenizer_dir),
        eos_token_id=tok.eos_token_id,
        vocab_size=len(tok),
        tokenizer_sha256=tokenizer_identity(tokenizer_dir),
        tokenizer_json_sha256=_file_sha256(Path(tokenizer_dir) / "tokenizer.json"),
    )
    checks = checks or EngineChecks()
    fast, reason = (None, "HF engine requested") if force == HF else _fast_spec(tok, checks.merge_order)
    if fast is not None:
        reason = (checks.unicode_classes or _local_unicode_check)()
        if reason is not None:
            fast = None
    if force == FAST and fast is None:
        raise UserError(f"the fast engine cannot reproduce this tokenizer exactly: {reason}")
    if fast is not None:
        reason = _probe_mismatch(FastBpeEngine(fast), tok)
        if reason is not None:
            if force == FAST:
                raise UserError(f"the fast engine disagrees with the tokenizer: {reason}")
            fast = None
    if fast is None:
        return EngineSpec(name=HF, fast=None, fallback_reason=reason, **common)
    return EngineSpec(name=FAST, fast=fast, fallback_reason=None, **common)


def _local_unicode_check() -> str | None:
    from q7x2_runtime.preprocess import unicode_classes
    from q7x2_runtime.preprocess.cache import cache_root

    return unicode_classes.check(cache_root())


def _fast_spec(tok, merge_order: MergeOrderCheck | None) -> tuple[FastBpeSpec | None, str | None]:
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        return None, "not a fast (tokenizers-backed) tokenizer"
    if getattr(tok, "split_special_tokens", False):
        return None, "split_special_tokens is set"
    try:
        return fast_bpe_spec(json.loads(backend.to_str()), merge_order), None
    except NotExact as e:
        return None, str(e)


def probe_texts(added_tokens: dict[str, int]) -> list[str]:
    """The texts both engines must agree on, with the tokenizer's added tokens mixed in."""
    added = list(added_tokens)
    probes = list(_PROBES)
    if added:
        probes.append("x" + "y ".join(added) + "z")
        probes.append("".join(added) + " " + "".join(a[:-1] for a in added))
    return probes


def _probe_mismatch(engine: FastBpeEngine, tok) -> str | None:
    for text in probe_texts(engine._added):
        want = tok(text)["input_ids"]
        got = engine.encode_one(text)
        if list(want) != got:
            return f"probe text {text[:30]!r} gives different ids"
    return None
