"""GPT-style training samples from an indexed dataset, the way Megatron's GPTDataset builds them.

Documents are concatenated (in a freshly shuffled order per epoch, with no separator beyond
what preprocessing put in), the stream is cut into windows of seq_length+1 tokens that overlap
by one token (inputs are window[:-1], labels window[1:]), and the windows are shuffled. All
shuffles come from one seeded RNG, so every rank and every resumed run sees the same order and
a run's data position is simply its consumed-sample count.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from q7x2_runtime.errors import UserError


class TokenDocuments(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> np.ndarray: ...


def _document_lengths(docs: TokenDocuments) -> np.ndarray:
    lengths = getattr(docs, "sequence_lengths", None)
    if lengths is not None and len(lengths) == len(docs):
        return np.asarray(lengths, dtype=np.int64)
    return np.array([len(docs[i]) for i in range(len(docs))], dtype=np.int64)


class PackedSamples:
    """num_samples windows of seq_length+1 token ids, in shuffled order."""

    def __init__(self, docs: TokenDocuments, seq_length: int, num_samples: int, seed: int) -> None:
        self.docs = docs
        self.seq_length = seq_length
        lengths = _document_lengths(docs)
        tokens_per_epoch = int(lengths.sum())
        if tokens_per_epoch < seq_length + 1:
            raise UserError(
                f"the dataset holds {tokens_per_epoch} tokens, fewer than one sample of seq_length+1 = {seq_length + 1}; "
                "use more data or a shorter seq_length"
            )
        # Enough epochs that the stream yields num_samples windows (the last needs one extra token).
        epochs = 1
        while (epochs * tokens_per_epoch - 1) // seq_length < num_samples:
            epochs += 1
        rng = np.random.RandomState(seed)
        self.doc_order = np.concatenate([rng.permutation(len(docs)) for _ in range(epochs)])
        doc_lens = lengths[self.doc_order]
        self.doc_starts = np.concatenate([[0], np.cumsum(doc_lens)[:-1]]).astype(np.int64)
        self.doc_lens = doc_lens
        self.shuffle = rng.permutation(num_samples)
        self.epochs = epochs

    def __len__(self) -> int:
        return len(self.shuffle)

    def __getitem__(self, i: int) -> np.ndarray:
        pos = int(self.shuffle[i]) * self.seq_length
        need = self.seq_length + 1
        k = int(np.searchsorted(self.doc_starts, pos, side="right")) - 1
        parts: list[np.ndarray] = []
        offset = pos - int(self.doc_starts[k])
        while need > 0:
            if self.doc_lens[k] > offset:
                piece = np.asarray(self.docs[int(self.doc_order[k])])[offset : offset + need]
                parts.append(piece)
                need -= len(piece)
            k += 1
            offset = 0
        return np.concatenate(parts).astype(np.int64)


def micro_batch_indices(consumed: int, micro_step: int, dp_rank: int, micro_batch_size: int, dp_size: int) -> range:
    """Sample indices of one rank's micro batch, as Megatron's pretraining sampler deals them.

    A global batch is accum consecutive chunks of micro_batch_size x dp samples; within a chunk
    data-parallel rank r takes the r-th slice of micro_batch_size.
    """
    start = consumed + micro_step * micro_batch_size * dp_size + dp_rank * micro_batch_size
    return range(start, start + micro_batch_size)
