"""Hostile and careless preprocess inputs: exit 2, one line naming the file or flag and the rule,
no traceback, nothing half-written left behind (issue 18, runtime part)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from q7x2_runtime.cli import main as runtime_main
from q7x2_runtime.indexed_dataset import IndexedDataset
from tests.runtime_fs import NOBODY, fill_inodes, needs_root, one_error_line, open_up, run_cli, tmpfs, world_tmp  # noqa: F401


def preprocess(capsys, src: Path, tok: Path, prefix: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = runtime_main(["preprocess", "--input", str(src), "--tokenizer-name-or-path", str(tok),
                       "--output-prefix", str(prefix), "--log-interval", "1000000000", *extra])  # fmt: skip
    return rc, capsys.readouterr().err


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"row {i} of the data"}) + "\n" for i in range(50)))
    return src


# -- flags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value",
    [("--batch-rows", "0"), ("--batch-rows", "-5"), ("--batch-rows", "100000000000"), ("--workers", "0"),
     ("--workers", "100000"), ("--log-interval", "0"), ("--json-keys", "../../etc/x"), ("--json-keys", "a/b"),
     ("--json-keys", ""), ("--json-keys", "te\nxt")],
)  # fmt: skip
def test_bad_flag_is_blamed_not_the_input(flag: str, value: str, jsonl: Path, qwen_tokenizer: Path, tmp_path: Path, capsys) -> None:
    rc, err = preprocess(capsys, jsonl, qwen_tokenizer, tmp_path / "o" / "x", flag, value)
    line = one_error_line(err, "preprocess")
    assert rc == 2 and line.startswith(f"q7x2-runtime preprocess: error: {flag} ") and str(jsonl) not in line, line
    assert leftovers(tmp_path / "o") == []


# -- special files ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "chardev", "socket", "broken-symlink"])
def test_special_file_as_input_is_not_a_regular_file(kind: str, qwen_tokenizer: Path, tmp_path: Path, capsys) -> None:
    import socket

    src = tmp_path / "in.jsonl"
    keep = None
    if kind == "fifo":
        os.mkfifo(src)
    elif kind == "chardev":
        src.symlink_to("/dev/zero")
    elif kind == "socket":
        keep = socket.socket(socket.AF_UNIX)
        keep.bind(str(src))
    else:
        src.symlink_to(tmp_path / "gone.jsonl")
    try:
        rc, err = preprocess(capsys, src, qwen_tokenizer, tmp_path / "o" / "x")
    finally:
        if keep is not None:
            keep.close()
    line = one_error_line(err, "preprocess")
    want = {"fifo": "is a FIFO (named pipe), not a regular file", "chardev": "is a character device, not a regular file",
            "socket": "is a socket, not a regular file", "broken-symlink": "broken symbolic link"}[kind]  # fmt: skip
    assert rc == 2 and want in line and str(src) in line and (kind == "broken-symlink" or "does not exist" not in line), line


def test_fifo_inside_an_input_directory_is_refused(qwen_tokenizer: Path, tmp_path: Path, capsys) -> None:
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    os.mkfifo(d / "b.jsonl")
    rc, err = preprocess(capsys, d, qwen_tokenizer, tmp_path / "o" / "x")
    assert rc == 2 and "holds b.jsonl, which is a FIFO" in one_error_line(err, "preprocess")


def test_fifo_as_tokenizer_json_does_not_block(jsonl: Path, qwen_tokenizer: Path, tmp_path: Path, capsys) -> None:
    tok = Path(shutil.copytree(qwen_tokenizer, tmp_path / "tok"))
    (tok / "tokenizer.json").unlink()
    os.mkfifo(tok / "tokenizer.json")
    rc, err = preprocess(capsys, jsonl, tok, tmp_path / "o" / "x")
    assert rc == 2 and "tokenizer.json is a FIFO" in one_error_line(err, "preprocess")


# -- CSV quoting ------------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\r\x00"), min_size=1, max_size=30)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(TEXT, min_size=2, max_size=12), quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]), data=st.data())
def test_one_unclosed_quote_is_refused_naming_its_line(rows, quoting, data, qwen_tokenizer: Path, tmp_path_factory, capsys) -> None:
    d = tmp_path_factory.mktemp("csv")
    buf = io.StringIO(newline="")
    w = csv.writer(buf, quoting=quoting, lineterminator="\n")
    w.writerow(["text", "n"])
    for i, r in enumerate(rows):
        w.writerow([r, i])
    good = d / "good.csv"
    good.write_bytes(buf.getvalue().encode())
    # Well-formed quoting (commas, quotes, newlines inside values) is read back exactly.
    rc, err = preprocess(capsys, good, qwen_tokenizer, d / "o" / "x", "--engine", "hf")
    assert rc == 0, err
    # One row whose value opens a quote that never closes.
    victim = data.draw(st.integers(0, len(rows) - 1))
    lines = ["text,n"]
    for i, r in enumerate(rows):
        value = r.replace('"', "").replace("\n", " ").replace(",", " ") or "x"
        lines.append(f'"{value},{i}' if i == victim else f'"{value}",{i}')
    bad = d / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    rc, err = preprocess(capsys, bad, qwen_tokenizer, d / "o2" / "x", "--engine", "hf")
    line = one_error_line(err, "preprocess")
    assert rc == 2 and f"{bad} line {victim + 2}:" in line and "unbalanced" in line, line
    assert leftovers(d / "o2") == []


def test_csv_values_with_quotes_commas_and_newlines_survive(qwen_tokenizer: Path, hf_tokenizer, tmp_path: Path, capsys) -> None:
    values = ['plain', 'a, comma', 'a "quoted" word', 'two\nlines', 'ends with quote"', '5" screen']
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text"])
    for v in values:
        w.writerow([v])
    src = tmp_path / "v.csv"
    src.write_text(buf.getvalue())
    rc, err = preprocess(capsys, src, qwen_tokenizer, tmp_path / "o" / "x", "--engine", "hf")
    assert rc == 0, err
    ds = IndexedDataset(tmp_path / "o" / "x_text_document")
    assert [hf_tokenizer.decode(ds[i].tolist()) for i in range(len(ds))] == values


# -- hostile output filesystems ---------------------------------------------------------------


@needs_root
@pytest.mark.slow
@pytest.mark.parametrize("case", ["disk-full", "no-inodes", "read-only", "not-writable"])
def test_output_on_a_hostile_filesystem_is_one_line_and_no_debris(case: str, qwen_tokenizer: Path, world_tmp: Path) -> None:
    src = world_tmp / "in.parquet"
    pq.write_table(pa.table({"text": [f"document number {i} " * 40 for i in range(3000)]}), src)
    tok = Path(shutil.copytree(qwen_tokenizer, world_tmp / "tok"))
    open_up(world_tmp)
    mnt = world_tmp / "mnt"
    options = {"read-only": "size=8m,ro", "no-inodes": "size=8m,nr_inodes=32", "disk-full": "size=64k", "not-writable": "size=8m"}[case]
    user = None
    with tmpfs(mnt, options):
        if case == "no-inodes":
            fill_inodes(mnt)
        parent = mnt
        if case == "not-writable":
            parent = mnt / "locked"
            parent.mkdir(mode=0o755)
            user = NOBODY
        before = leftovers(parent)
        env = {**os.environ, "Q7X2_CACHE_DIR": str(world_tmp / "cache")}
        proc = run_cli("preprocess", "--input", str(src), "--tokenizer-name-or-path", str(tok),
                       "--output-prefix", str(parent / "x"), "--engine", "hf", user=user, env=env, timeout=300)  # fmt: skip
        line = one_error_line(proc.stderr, "preprocess")
        want = {"read-only": "read-only", "no-inodes": "no free inodes", "disk-full": "disk full", "not-writable": "permission denied"}[case]
        assert proc.returncode == 2 and want in line and str(parent) in line, line
        assert leftovers(parent) == before


def test_output_is_fsynced_before_it_is_renamed_into_place(jsonl: Path, qwen_tokenizer: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b) -> None:
        events.append(("replace", str(a)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    rc, err = preprocess(capsys, jsonl, qwen_tokenizer, tmp_path / "o" / "x", "--engine", "hf")
    assert rc == 0, err
    renamed = [p for kind, p in events if kind == "replace" and str(tmp_path / "o") in p]
    assert len(renamed) == 3  # .bin, manifest, .idx
    for tmp in renamed:
        first_rename = events.index(("replace", tmp))
        assert ("fsync", tmp) in events[:first_rename], tmp
    assert events[-1] == ("fsync", str(tmp_path / "o"))  # the directory, after the renames


# -- deep nesting, names with newlines, usage errors -------------------------------------------


@pytest.mark.parametrize("where", ["jsonl-first", "jsonl-later", "array"])
def test_json_nested_beyond_the_stack_is_one_line(where: str, qwen_tokenizer: Path, tmp_path: Path, capsys) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    src = tmp_path / ("in.json" if where == "array" else "in.jsonl")
    if where == "jsonl-first":
        src.write_text('{"text": ' + deep + "}\n")
    elif where == "jsonl-later":
        src.write_text('{"text": "fine"}\n' * 3 + '{"text": ' + deep + "}\n")
    else:
        src.write_text('[{"text": ' + deep + "}]\n")
    rc, err = preprocess(capsys, src, qwen_tokenizer, tmp_path / "o" / "x")
    line = one_error_line(err, "preprocess")
    assert rc == 2 and str(src) in line and "nested too deeply" in line and err.strip() == line, err
    assert leftovers(tmp_path / "o") == []


def test_a_path_holding_a_newline_is_named_on_one_escaped_line(jsonl: Path, qwen_tokenizer: Path, tmp_path: Path, capsys) -> None:
    rc, err = preprocess(capsys, Path(f"{jsonl}\nreboot"), qwen_tokenizer, tmp_path / "o" / "x")
    line = one_error_line(err, "preprocess")
    assert rc == 2 and f"{jsonl}\\nreboot" in line and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "argv",
    [["convert", "--load-dir", "x", "--save-dir", "y", "--pp", "2", "--num-layer-list", "1,x"], ["convert", "--tp", "two"],
     ["preprocess", "--workers", "many"], ["preprocess", "--input"], ["convert", "--engine", "a\nb", "-i", "x", "-o", "y"], ["nope"], []],
)  # fmt: skip
def test_a_usage_error_is_one_line_pointing_at_help(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        runtime_main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("q7x2-runtime") and ": error: " in err and "--help)" in err and "Traceback" not in err, err


def test_a_killed_runs_engine_cache_temporary_is_removed_by_the_next_store(tmp_path: Path, monkeypatch) -> None:
    import subprocess
    import sys

    from q7x2_runtime.preprocess import engine_cache
    from q7x2_runtime.preprocess.engines import EngineSpec

    monkeypatch.setattr(engine_cache, "cache_dir", lambda: tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f".tmp-{dead}-abc.json").write_text('{"half": ')
    live = tmp_path / f".tmp-{os.getpid()}-def.json"
    live.write_text("{}")
    spec = EngineSpec(name="hf", tokenizer_dir=str(tmp_path), fast=None, fallback_reason=None, eos_token_id=None, vocab_size=1, tokenizer_sha256="0", tokenizer_json_sha256=None)
    engine_cache.store("k", spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["k.json", live.name])
