"""Bad input: one-line UserErrors naming the problem, non-zero exit, nothing partial left."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from q7x2_runtime.cli import main as runtime_main
from q7x2_runtime.errors import UserError
from q7x2_runtime.preprocess.pipeline import PreprocessOptions, run


def _run(src, tok, out, **kw):
    return run(PreprocessOptions(input=str(src), tokenizer=str(tok), output_prefix=str(out), log_interval=10**9, **kw))


def _assert_clean(out_dir):
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def _cli_error(args, capsys) -> str:
    rc = runtime_main(["preprocess", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    return err[-1]


def test_missing_column_lists_the_columns_present(tmp_path, qwen_tokenizer, capsys):
    src = tmp_path / "a.parquet"
    pq.write_table(pa.table({"instruction": ["i"], "output": ["o"]}), src)
    line = _cli_error(["--input", str(src), "--tokenizer-name-or-path", str(qwen_tokenizer),
                       "--output-prefix", str(tmp_path / "o" / "x")], capsys)
    assert line.startswith("q7x2-runtime preprocess: error:")
    assert "'text'" in line and "instruction, output" in line and str(src) in line
    _assert_clean(tmp_path / "o")


def test_empty_file_is_named(tmp_path, qwen_tokenizer):
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    with pytest.raises(UserError, match=r"empty\.jsonl is empty"):
        _run(src, qwen_tokenizer, tmp_path / "o" / "x")
    _assert_clean(tmp_path / "o")


def test_parquet_without_rows_is_named(tmp_path, qwen_tokenizer):
    src = tmp_path / "norows.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), src)
    with pytest.raises(UserError, match=r"norows\.parquet has no rows"):
        _run(src, qwen_tokenizer, tmp_path / "o" / "x")


def test_corrupt_parquet_is_named(tmp_path, qwen_tokenizer):
    src = tmp_path / "broken.parquet"
    src.write_bytes(b"PAR1 this is not really parquet at all PAR1")
    with pytest.raises(UserError, match=r"broken\.parquet") as e:
        _run(src, qwen_tokenizer, tmp_path / "o" / "x")
    assert "\n" not in str(e.value)
    _assert_clean(tmp_path / "o")


def test_truncated_parquet_mid_file_leaves_nothing(tmp_path, qwen_tokenizer):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " * 20 for i in range(2000)]}), good, row_group_size=200)
    src = tmp_path / "d" / "cut.parquet"
    src.parent.mkdir()
    data = good.read_bytes()
    src.write_bytes(data[: len(data) // 2] + data[-2000:])  # footer intact, pages gone
    with pytest.raises(UserError, match=r"cut\.parquet"):
        _run(src.parent, qwen_tokenizer, tmp_path / "o" / "x", workers=2)
    _assert_clean(tmp_path / "o")


def test_mixed_formats_in_a_directory(tmp_path, qwen_tokenizer):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    pq.write_table(pa.table({"text": ["y"]}), d / "b.parquet")
    with pytest.raises(UserError, match=r"mixes formats \(\.jsonl, \.parquet\)"):
        _run(d, qwen_tokenizer, tmp_path / "o" / "x")


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "csv", "parquet"])
def test_non_utf8_text_is_a_clear_error_and_leaves_nothing(fmt, tmp_path, qwen_tokenizer):
    src = tmp_path / f"bad.{fmt}"
    good = [f"fine row {i}" for i in range(300)]
    if fmt == "jsonl":
        src.write_bytes(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in good) + b'{"text": "caf\xe9"}\n')
    elif fmt == "txt":
        src.write_bytes("\n".join(good).encode() + b"\ncaf\xe9\n")
    elif fmt == "csv":
        src.write_bytes(b"text\n" + "\n".join(good).encode() + b"\ncaf\xe9\n")
    else:
        col = pa.array([t.encode() for t in good] + [b"caf\xe9"], pa.binary()).cast(pa.string(), safe=False)
        pq.write_table(pa.table({"text": col}), src)
    out = tmp_path / "o" / "x"
    with pytest.raises(UserError, match="UTF-8|utf-8|UTF8") as e:
        _run(src, qwen_tokenizer, out, batch_rows=64)
    assert str(src) in str(e.value) and "\n" not in str(e.value)
    _assert_clean(tmp_path / "o")


def test_unpaired_surrogate_in_json_is_rejected(tmp_path, qwen_tokenizer):
    src = tmp_path / "s.jsonl"
    src.write_text('{"text": "ok"}\n{"text": "bad \\ud800 here é"}\n')
    with pytest.raises(UserError, match="row 2.*surrogate"):
        _run(src, qwen_tokenizer, tmp_path / "o" / "x")


def test_invalid_json_line_is_named(tmp_path, qwen_tokenizer):
    src = tmp_path / "j.jsonl"
    src.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"j\.jsonl line 2 is not valid JSON"):
        _run(src, qwen_tokenizer, tmp_path / "o" / "x")


def test_non_text_column(tmp_path, qwen_tokenizer):
    src = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), src)
    with pytest.raises(UserError, match="not text"):
        _run(src, qwen_tokenizer, tmp_path / "o" / "x")


def test_missing_input_and_tokenizer(tmp_path, qwen_tokenizer):
    with pytest.raises(UserError, match="does not exist"):
        _run(tmp_path / "nope.parquet", qwen_tokenizer, tmp_path / "o" / "x")
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "x"}\n')
    with pytest.raises(UserError, match="tokenizer"):
        _run(src, tmp_path / "no-tokenizer", tmp_path / "o" / "x")


def test_failure_keeps_a_previous_complete_output(tmp_path, qwen_tokenizer):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "hello"}\n')
    out = tmp_path / "o" / "x"
    _run(src, qwen_tokenizer, out)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    src.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(UserError):
        _run(src, qwen_tokenizer, out)
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before
