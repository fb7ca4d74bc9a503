"""The byte <-> printable-character table of byte-level BPE (GPT-2, Qwen2).

Vocabularies in tokenizer.json spell every byte as one printable character; the fast engine
needs the raw bytes back. The table is a fixed convention (printable Latin-1 bytes map to
themselves, the other 68 bytes to U+0100 upwards in byte order).
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_char().items()}


def token_bytes(token: str) -> bytes | None:
    """The bytes a vocabulary entry stands for, or None if it is not byte-level spelled."""
    table = char_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return None
