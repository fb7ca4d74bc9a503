"""The first run's proof: the model transformers built is recognised by the digest of its
serialized text, anything that digest does not settle is derived in full, and nothing the
proof rejects is ever written."""

from __future__ import annotations

import json

import pytest

from q7x2_runtime.preprocess.fast_bpe import GPT2_PATTERN, QWEN2_PATTERN
from q7x2_runtime.preprocess.pipeline import run
from q7x2_runtime.preprocess.confirming import pretty_model_sha256, split_model, text_sha256
from q7x2_runtime.preprocess.speculation import serialized_model
from tests.preprocess.conftest import edit_tokenizer
from tests.preprocess.test_pipeline import ROWS, alpaca_parquet, expected, megatron_docs, opts  # noqa: F401
from tests.runtime_fs import alive, children


def _built_model_text(tokenizer_dir, pretty: bool = False) -> tuple[dict, str]:
    from transformers import AutoTokenizer

    parts = split_model(AutoTokenizer.from_pretrained(tokenizer_dir).backend_tokenizer.to_str(pretty=pretty))
    assert parts is not None
    return parts


def test_split_model_cuts_out_the_model_text_exactly():
    text = '{"version":"1.0","added_tokens":[{"content":"\\"model\\":{"}],"model":{"type":"BPE","vocab":{"a":0}}}'
    head, model = split_model(text)
    assert head == {"version": "1.0", "added_tokens": [{"content": '"model":{'}]}
    assert model == '{"type":"BPE","vocab":{"a":0}}' and json.loads(model) == json.loads(text)["model"]


def test_a_model_that_is_not_last_cannot_pass_for_a_model():
    # The text after "model": is then not one JSON value, so it equals no serialized_model.
    for text in ('{"model":{"type":"BPE"},"version":"1.0"}', '{"version":"1.0","model":{"a":1}'):
        _, rest = split_model(text)
        with pytest.raises(json.JSONDecodeError):
            json.loads(rest)


@pytest.mark.parametrize(
    "text",
    [
        '{"version":"1.0","version":"2.0","model":{}}',  # a duplicate member
        '{"version" "1.0","model":{}}',  # no colon
        '{"version":"1.0" "model":{}}',  # no comma
        '{"version":"1.0","model": }',  # no model text
        '{"version":"1.0"}',  # no model
        '["model",{}]',
    ],
)
def test_split_model_refuses_any_other_shape(text):
    assert split_model(text) is None


def test_split_model_reads_the_pretty_spelling_too():
    text = '{\n  "version": "1.0",\n  "model": {\n    "type": "BPE",\n    "vocab": {"a": 0}\n  }\n}'
    head, model = split_model(text)
    assert head == {"version": "1.0"} and model == '{\n    "type": "BPE",\n    "vocab": {"a": 0}\n  }'
    assert json.loads(model) == json.loads(text)["model"]


def test_serialized_model_is_the_librarys_own_text(qwen_tokenizer):
    from tokenizers import Tokenizer

    model = json.loads((qwen_tokenizer / "tokenizer.json").read_text())["model"]
    head, text = split_model(Tokenizer.from_file(str(qwen_tokenizer / "tokenizer.json")).to_str())
    assert serialized_model(model) == text
    assert "model" not in head and head["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == QWEN2_PATTERN


def test_a_file_saved_by_the_library_is_digested_in_its_own_bytes(qwen_tokenizer, tmp_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(qwen_tokenizer / "tokenizer.json"))
    tok.save(str(tmp_path / "pretty.json"))
    tok.save(str(tmp_path / "compact.json"), pretty=False)
    _, text = split_model(tok.to_str(pretty=True))
    assert pretty_model_sha256((tmp_path / "pretty.json").read_bytes()) == text_sha256(text)
    assert pretty_model_sha256((tmp_path / "compact.json").read_bytes()) is None  # serialized_model's case
    # Anything after the model, or a different model, changes the digest: the full derivation.
    raw = (tmp_path / "pretty.json").read_bytes()
    assert pretty_model_sha256(raw[:-2] + b',\n  "extra": 1\n}') != text_sha256(text)
    assert pretty_model_sha256(raw.replace(b'"type": "BPE"', b'"type": "BPE", "dropout": 0.1', 1)) != text_sha256(text)


def _respelled(data):
    # Same model, spelled differently from the tokenizers library: merges first, as "a b" strings.
    model = data["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.pop("merges")]
    data["model"] = {"merges": merges, **model}


def test_a_model_spelled_otherwise_is_derived_in_full_and_exact(alpaca_parquet, qwen_tokenizer, hf_tokenizer, tmp_path):  # noqa: F811
    # Respelled here; and Qwen2Tokenizer rebuilds this trained model with "" where the file
    # says null (continuing_subword_prefix): the same model, not the same text.
    tok = edit_tokenizer(qwen_tokenizer, tmp_path / "respelled", _respelled)
    model = json.loads((tok / "tokenizer.json").read_text())["model"]
    _, built = _built_model_text(tok)
    assert text_sha256(serialized_model(model)) != text_sha256(built)  # the digest does not settle it
    res = run(opts(alpaca_parquet, tok, tmp_path / "o" / "a", workers=2, append_eod=True))
    assert res.manifest["tokenizer"]["engine"] == "tiktoken-bpe"
    assert res.manifest["tokenizer"]["engine_decision"] == "verified"
    texts = [r["text"] for r in ROWS]
    assert megatron_docs(res.outputs["text"]) == expected(hf_tokenizer, texts, hf_tokenizer.eos_token_id)


def _gpt2_pre_tokenizer(data):
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def test_a_pipeline_transformers_rebuilds_is_never_taken_from_tokenizer_json(alpaca_parquet, qwen_tokenizer, tmp_path):  # noqa: F811
    # tokenizer.json says GPT-2's pre-tokenizer (digits in runs), so the workers start with
    # that candidate; Qwen2Tokenizer rebuilds Qwen2's (one digit per piece). The proof
    # rejects the candidate: no id of it is written, and the run ends with what really runs.
    from transformers import AutoTokenizer

    tok = edit_tokenizer(qwen_tokenizer, tmp_path / "gpt2", _gpt2_pre_tokenizer)
    hf = AutoTokenizer.from_pretrained(tok)
    built = json.loads(hf.backend_tokenizer.to_str())["pre_tokenizer"]
    assert built["type"] == "Sequence" and built["pretokenizers"][0]["pattern"]["Regex"] == QWEN2_PATTERN
    rows = [r["text"] for r in ROWS] + [f"numbers {i * 123456789}" for i in range(300)]
    src = tmp_path / "n.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": rows}), src, row_group_size=64)
    res = run(opts(src, tok, tmp_path / "o" / "a", workers=2, batch_rows=64))
    assert res.manifest["tokenizer"]["fast_pattern"] == "qwen2" != GPT2_PATTERN
    assert megatron_docs(res.outputs["text"]) == expected(hf, rows)
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(".")]


def test_the_real_qwen_model_is_proven_by_its_digest():
    from bench.assets import AssetUnavailable, qwen_tokenizer_dir

    try:
        real = qwen_tokenizer_dir()
    except AssetUnavailable as e:
        pytest.skip(str(e))
    # It is saved pretty, so the parent hashes the model's text in the file itself.
    _, built = _built_model_text(real, pretty=True)
    assert pretty_model_sha256((real / "tokenizer.json").read_bytes()) == text_sha256(built)
    model = json.loads((real / "tokenizer.json").read_text())["model"]
    _, built = _built_model_text(real)
    assert text_sha256(serialized_model(model)) == text_sha256(built)


def test_the_confirming_process_is_started_only_for_a_run_that_speculates(qwen_tokenizer, tmp_path, monkeypatch):
    from q7x2_runtime.preprocess.confirming import confirmer_for

    monkeypatch.setenv("Q7X2_CACHE_DIR", str(tmp_path / "cache"))
    for engine, workers in (("hf", 2), ("auto", 1), ("auto", 0), ("auto", True), ("auto", "2"), ("auto", 10**6)):
        assert confirmer_for(str(qwen_tokenizer), engine, workers) is None, (engine, workers)
    assert confirmer_for(str(tmp_path / "missing"), "auto", 2) is None  # the run itself says why, in its order
    fifo = tmp_path / "fifo-tokenizer"
    fifo.mkdir()
    import os

    os.mkfifo(fifo / "tokenizer.json")
    assert confirmer_for(str(fifo), "auto", 2) is None  # refused before any read: nothing blocks
    monkeypatch.setenv("Q7X2_PREPROCESS_SPECULATE", "0")
    assert confirmer_for(str(qwen_tokenizer), "auto", 2) is None
    monkeypatch.delenv("Q7X2_PREPROCESS_SPECULATE")
    confirmer = confirmer_for(str(qwen_tokenizer), "fast", 2)
    assert confirmer is not None
    confirmer.close()


def test_a_confirmer_the_caller_started_proves_the_run_and_stays_the_callers(alpaca_parquet, real_qwen, tmp_path, monkeypatch):  # noqa: F811
    from transformers import AutoTokenizer

    from q7x2_runtime.preprocess.confirming import confirmer_for

    monkeypatch.setenv("Q7X2_CACHE_DIR", str(tmp_path / "cache"))
    confirmer = confirmer_for(str(real_qwen), "auto", 2)
    assert confirmer is not None
    try:
        res = run(opts(alpaca_parquet, real_qwen, tmp_path / "o" / "a", workers=2), confirmer)
        assert res.manifest["tokenizer"]["engine_decision"] == "verified"
        assert res.manifest["tokenizer"]["engine"] == "tiktoken-bpe"
        hf = AutoTokenizer.from_pretrained(real_qwen)
        assert megatron_docs(res.outputs["text"]) == expected(hf, [r["text"] for r in ROWS])
        assert confirmer.process.apply_async(len, ("ok",)).get(timeout=60) == 2  # run() left it running
    finally:
        confirmer.close()
    # the proven decision was stored once every id was written: the next run needs no confirmer
    assert confirmer_for(str(real_qwen), "auto", 2) is None
    again = run(opts(alpaca_parquet, real_qwen, tmp_path / "o2" / "a", workers=2))
    assert again.manifest["tokenizer"]["engine_decision"] == "cached"


class _Done:
    """A finished task of the confirming process (its stored decision)."""

    def ready(self) -> bool:
        return True

    def wait(self, timeout: float) -> None:
        pass


class _Confirmer:
    """The fake gates' confirming process owner: counts the closes."""

    closed = 0

    def close(self) -> None:
        self.closed += 1


class _AliveProcess:
    """A confirming process that never dies (the fake gates below have no real one)."""

    def check(self) -> None:
        return None


class _Ticking:
    def __init__(self) -> None:
        self.on = True

    def in_flight(self) -> int | None:
        return 1

    def ticking(self) -> bool:
        return self.on


def test_a_paced_stream_ticks_while_a_result_is_awaited_and_keeps_order(qwen_tokenizer, tmp_path):
    from pathlib import Path

    from q7x2_runtime.preprocess.engines import choose_engine
    from q7x2_runtime.preprocess.parallel import WorkerPool
    from q7x2_runtime.preprocess.sources import Batch, SourceFile

    spec = choose_engine(str(qwen_tokenizer))
    source = SourceFile(path=Path(tmp_path / "x.jsonl"), format="jsonl", rows=None)
    texts = ["many words to tokenize here, " * 20_000, "short", "again " * 10_000]
    batches = [Batch(source, i, {"text": [t]}) for i, t in enumerate(texts)]
    pacing = _Ticking()
    with WorkerPool(2) as pool:
        items = list(pool.paced(iter(batches), spec, None, pacing))
        ticks = sum(item is None for item in items)
        got = [item[0].first_row for item in items if item is not None]
        assert ticks >= 1 and got == [0, 1, 2]
        pacing.on = False
        assert None not in list(pool.paced(iter(batches), spec, None, pacing))
        assert [b.first_row for b, _ in pool.ordered(iter(batches), spec, None)] == [0, 1, 2]


def test_held_ids_are_released_on_a_tick_once_the_proof_is_complete():
    """The gate writes what it holds as soon as the proof is complete, without waiting for the
    next batch to come back (fake proof: the boundary under test is the gate's)."""
    from q7x2_runtime.preprocess.speculation import Confirmation, Rejected

    class Item:
        def __init__(self, row: int) -> None:
            self.first_row = row

    gate = object.__new__(Confirmation)
    gate._settled, gate._fast_probe_ids, gate._remembering, gate._head = False, [[1]], None, None
    gate._process, gate._confirmer, gate._let_go = _AliveProcess(), _Confirmer(), False
    proof = {"ready": False, "ok": True}
    gate._ready = lambda: proof["ready"]  # type: ignore[method-assign]

    def settle():
        gate._settled = True
        gate.verdict = object() if proof["ok"] else None
        return gate.verdict

    gate.settle = settle  # type: ignore[method-assign]
    gate._remember = _Done  # type: ignore[method-assign]
    written: list = []

    def stream():
        yield (Item(0), {})
        yield None  # a tick: the proof is not complete yet
        assert written == []
        proof["ready"] = True
        yield None  # a tick once it is: the held batch is written before the next comes back
        assert [i.first_row for i, _ in written] == [0]
        yield (Item(1), {})

    for item in gate.gate(stream()):
        written.append(item)
    assert [i.first_row for i, _ in written] == [0, 1]
    # Once the decision is stored the confirming process is stopped, mid-run, and only once.
    assert gate._confirmer.closed == 1 and gate._let_go
    gate._let_go, gate._remembering = False, None

    gate._settled, proof["ready"], proof["ok"] = False, False, False
    written.clear()
    with pytest.raises(Rejected):  # a proof that fails: nothing held is ever written
        for item in gate.gate(iter([(Item(0), {}), None, (Item(1), {})])):
            written.append(item)
    assert written == []


def test_the_first_rows_are_written_as_soon_as_transformers_has_encoded_them():
    """The first rows' ids come from the confirming process (transformers itself) and are
    written on the first tick after they arrive, before the proof is complete; the
    candidate's ids still wait for it (fake proof and results: the gate's boundary)."""
    import numpy as np

    from q7x2_runtime.preprocess.speculation import Confirmation, Rejected

    class Item:
        def __init__(self, row: int, texts: list) -> None:
            self.first_row, self.columns = row, {"text": texts}

    class Result:
        def __init__(self, value) -> None:
            self.value, self.done = value, False

        def ready(self) -> bool:
            return self.done

        def get(self):
            assert self.done, "the gate waited for a result that was not due"
            return self.value

    def gate_for(proof_ok: bool):
        gate = object.__new__(Confirmation)
        gate._settled, gate._remembering, gate._eod = False, None, 7
        gate._process, gate._confirmer, gate._let_go = _AliveProcess(), _Confirmer(), False
        head = Result({"text": [[1, 2], [3]]})
        gate._head = (Item(0, ["a b", None, "c"]), head)
        gate._ready = lambda: False  # type: ignore[method-assign]

        def settle():
            gate._settled = True
            gate.verdict = object() if proof_ok else None
            return gate.verdict

        gate.settle = settle  # type: ignore[method-assign]
        gate._remember = _Done  # type: ignore[method-assign]
        return gate, head

    gate, head = gate_for(True)
    written: list = []
    candidate = (Item(3, ["d"]), {"text": type("Col", (), {"ids": np.zeros(2, np.int32)})()})

    def stream():
        yield None  # a tick: transformers is still loading
        assert written == []
        head.done = True
        yield candidate  # the candidate's ids: held, the proof is not complete
        assert [b.first_row for b, _ in written] == [0]
        yield None

    for item in gate.gate(stream()):
        written.append(item)
    first, encoded = written[0]
    col = encoded["text"]
    assert first.first_row == 0 and col.ids.tolist() == [1, 2, 7, 3, 7] and col.lengths.tolist() == [3, 2]
    assert col.skipped_empty == 1 and [b.first_row for b, _ in written] == [0, 3]

    gate, head = gate_for(False)
    head.done = True
    written.clear()
    with pytest.raises(Rejected):  # the pipeline then removes the output, which never looked complete
        for item in gate.gate(iter([candidate])):
            written.append(item)
    assert [b.first_row for b, _ in written] == [0]


def test_a_first_run_writes_transformers_ids_of_the_first_rows_before_its_proof_settles(alpaca_parquet, real_qwen, tmp_path, monkeypatch):  # noqa: F811
    from transformers import AutoTokenizer

    from q7x2_runtime.preprocess import output, speculation

    monkeypatch.setenv("Q7X2_CACHE_DIR", str(tmp_path / "cache"))
    events: list = []
    settle, add = speculation.Confirmation.settle, output.OutputSet.add
    monkeypatch.setattr(speculation.Confirmation, "settle", lambda self: (events.append("settle"), settle(self))[1])
    monkeypatch.setattr(output.OutputSet, "add", lambda self, key, ids, lengths: (events.append(len(lengths)), add(self, key, ids, lengths))[1])
    monkeypatch.setattr(speculation, "FIRST_ROWS", 20)
    res = run(opts(alpaca_parquet, real_qwen, tmp_path / "o" / "a", workers=2, append_eod=True))
    assert res.manifest["tokenizer"]["engine_decision"] == "verified"
    assert events[0] == 20 - sum(not r["text"] for r in ROWS[:20]) and events[1] == "settle"
    hf = AutoTokenizer.from_pretrained(real_qwen)
    assert megatron_docs(res.outputs["text"]) == expected(hf, [r["text"] for r in ROWS], hf.eos_token_id)


def test_a_killed_first_run_leaves_no_process_behind(qwen_tokenizer, tmp_path):
    """SIGKILL the command's parent while its confirming process loads transformers: every
    process it started goes by itself, with nothing left in TMPDIR and no output that looks
    complete (a rerun removes the temporaries: the crash drill)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    tmpdir, out = tmp_path / "tmp", tmp_path / "out"
    tmpdir.mkdir()
    out.mkdir()
    data = tmp_path / "many.parquet"  # a run of seconds, not one that may end before the kill
    pq.write_table(pa.Table.from_pylist([{"text": f"{r['text']} {i}"} for i in range(400) for r in ROWS]), data)
    env = {**os.environ, "Q7X2_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmpdir)}
    argv = [sys.executable, "-m", "q7x2_runtime.cli", "preprocess", "--input", str(data),
            "--tokenizer-name-or-path", str(qwen_tokenizer), "--output-prefix", str(out / "a"), "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        kids: list[int] = []
        while len(kids) < 4:  # the resource tracker, the confirming process, two workers
            assert proc.poll() is None and time.monotonic() < deadline, f"only {kids} started"
            kids = sorted(set(kids) | set(children(proc.pid)))
            time.sleep(0.005)
        time.sleep(0.3)  # past fork and exec
        kids = sorted(set(kids) | set(children(proc.pid)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while any(map(alive, kids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [k for k in kids if alive(k)], "a process of the killed run is still running"
        assert list(tmpdir.iterdir()) == []
        assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == [], "nothing may look complete"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_merge_parts_together_check_every_merge_and_only_once(qwen_tokenizer):
    """The proof's merge check in parts by token length (two thirds at once, a third after the
    engine is built): every merge length in exactly one part, costs in about the weights'
    proportion, and a failing merge reported by the part it falls in and no other."""
    import json as _json

    from q7x2_runtime.preprocess.fast_bpe import merge_table, split_by_length
    from q7x2_runtime.preprocess.merge_order import failing_merges
    from q7x2_runtime.preprocess.parallel import WorkerPool
    from tests.preprocess.test_engines import _break_reachability

    data = _json.loads((qwen_tokenizer / "tokenizer.json").read_text())
    _break_reachability(data)
    merged, ranks = merge_table(data["model"])
    (bad,) = failing_merges(merged, ranks)
    parts = split_by_length(merged, [2, 1])
    lengths = {len(m[0]) for m in merged if len(m[0]) > 2}
    assert set().union(*parts) == lengths and sum(map(len, parts)) == len(lengths)  # a partition
    cost = [sum(len(m[0]) - 1 for m in merged if len(m[0]) in part) for part in parts]
    assert cost[1] <= cost[0] <= 3 * cost[1], cost
    with WorkerPool(2) as pool:
        check = pool.merge_checker(merged, ranks)
        found = [check(part).get(60) for part in parts]
        everything = check(lengths | {2}).get(60)
    assert [bool(r) for r in found] == [len(merged[bad][0]) in part for part in parts], (bad, found)
    assert everything and all("not reached by its own merge" in r for r in found if r)
