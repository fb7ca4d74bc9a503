"""The .bin/.idx writer and reader, checked against megatron-core's own reader."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from q7x2_runtime.errors import UserError
from q7x2_runtime.indexed_dataset import IndexedDataset, IndexedDatasetWriter


def megatron_reader(prefix):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset
    return MegatronIndexedDataset(str(prefix))


def write(prefix, docs):
    with IndexedDatasetWriter(f"{prefix}.bin", f"{prefix}.idx") as w:
        for d in docs:
            w.add_document(d)


def test_layout_matches_the_documented_header(tmp_path):
    write(tmp_path / "d", [[1, 2, 3], [151643]])
    raw = (tmp_path / "d.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", raw[9:34])
    assert (version, code, n_seq, n_doc) == (1, 4, 2, 3)
    lengths = np.frombuffer(raw, np.int32, 2, 34)
    pointers = np.frombuffer(raw, np.int64, 2, 42)
    docs = np.frombuffer(raw, np.int64, 3, 58)
    assert lengths.tolist() == [3, 1] and pointers.tolist() == [0, 12] and docs.tolist() == [0, 1, 2]
    assert len(raw) == 58 + 24
    assert np.frombuffer((tmp_path / "d.bin").read_bytes(), np.int32).tolist() == [1, 2, 3, 151643]


def test_megatron_core_reads_what_we_write(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 152064, size=int(n)).tolist() for n in rng.integers(1, 200, size=50)]
    prefix = tmp_path / "m"
    with IndexedDatasetWriter(f"{prefix}.bin", f"{prefix}.idx") as w:
        w.add_documents(np.concatenate([np.asarray(d) for d in docs[:20]]), np.array([len(d) for d in docs[:20]]))
        for d in docs[20:]:
            w.add_document(d)
    theirs = megatron_reader(prefix)
    ours = IndexedDataset(prefix)
    assert len(theirs) == len(ours) == 50
    assert theirs.index.dtype == np.int32 and ours.dtype == np.int32
    np.testing.assert_array_equal(theirs.document_indices, ours.document_indices)
    np.testing.assert_array_equal(theirs.sequence_lengths, ours.sequence_lengths)
    for i, d in enumerate(docs):
        assert theirs[i].tolist() == d == ours[i].tolist()
    assert ours.get(3, 1, 2).tolist() == docs[3][1:3]
    assert [s.tolist() for s in ours[1:3]] == docs[1:3] and ours[-1].tolist() == docs[-1]


def test_multi_sequence_documents(tmp_path):
    prefix = tmp_path / "s"
    with IndexedDatasetWriter(f"{prefix}.bin", f"{prefix}.idx") as w:
        w.add_document_sequences([[1, 2], [3]])
        w.add_document([4])
    ds = IndexedDataset(prefix)
    assert ds.document_indices.tolist() == [0, 2, 3]
    assert [s.tolist() for s in ds.document(0)] == [[1, 2], [3]]
    assert megatron_reader(prefix).document_indices.tolist() == [0, 2, 3]


def test_empty_dataset_round_trips(tmp_path):
    write(tmp_path / "e", [])
    ds = IndexedDataset(tmp_path / "e")
    assert len(ds) == 0 and ds.document_indices.tolist() == [0]


def test_reader_rejects_truncated_or_foreign_files(tmp_path):
    write(tmp_path / "t", [[1, 2, 3]])
    (tmp_path / "t.bin").write_bytes(b"\0" * 4)
    with pytest.raises(UserError, match="holds 4 bytes"):
        IndexedDataset(tmp_path / "t")
    (tmp_path / "t.idx").write_bytes(b"not an index at all, definitely not" * 2)
    with pytest.raises(UserError, match="bad header"):
        IndexedDataset(tmp_path / "t")
    with pytest.raises(UserError, match="does not exist"):
        IndexedDataset(tmp_path / "missing")
