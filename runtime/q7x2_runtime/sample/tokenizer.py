"""A small byte-level BPE tokenizer built the way Qwen2's is: NFC, Qwen2's split regex, byte level.

Trained with the `tokenizers` library on the project's own text, so nothing is downloaded and
the result loads through transformers' AutoTokenizer like a real Qwen2.5 tokenizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# The pre-tokenizer regex of Qwen2/Qwen2.5's tokenizer.json.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Trained tokens (256 byte symbols + merges); the special tokens come after, as in Qwen2.
BPE_VOCAB_SIZE = 1021


def train_tokenizer(texts: list[str], *, vocab_size: int = BPE_VOCAB_SIZE, min_frequency: int = 2, specials_in_vocab: bool = False):
    """Return a trained `tokenizers.Tokenizer` with the Qwen2 special tokens appended.

    specials_in_vocab: train with the special tokens at the start of the vocabulary instead
    (a layout some tokenizers use; preprocessing must handle both)."""
    # Single-threaded training: the result must not depend on thread scheduling.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # The ByteLevel decoder has no options (tokenizers ignores any given): it only maps bytes back.
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS) if specials_in_vocab else [],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if not specials_in_vocab:
        tok.add_special_tokens(list(SPECIAL_TOKENS))  # Qwen2 layout: after the BPE vocabulary
    return tok


def _added_token_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}


def write_tokenizer(tok, out_dir: Path, model_max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json, vocab.json and merges.txt (for slow-tokenizer readers)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"), pretty=True)
    tok.model.save(str(out_dir))  # vocab.json + merges.txt
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(ids[t]): _added_token_entry(t) for t in SPECIAL_TOKENS},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def special_token_ids(tok) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
