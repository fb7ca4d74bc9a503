"""Input discovery and streaming: parquet, jsonl/json, csv, txt, arrow.

Every reader yields bounded batches of rows (parquet row groups / arrow record batches /
CSV blocks / line chunks), so memory stays flat whatever the dataset size. Problems a user
can fix (missing column, empty or corrupt file, mixed formats, bad UTF-8) become one-line
UserErrors naming the file; they are found up front where cheap, otherwise mid-stream.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as paipc
import pyarrow.parquet as pq

from q7x2_runtime.errors import UserError
from q7x2_runtime.os_errors import kind_of, present, reason, regular_file

# extension -> format; .json and .jsonl share a reader, as in HF datasets
FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "txt", ".arrow": "arrow"}
TXT_COLUMN = "text"  # a text file's lines form the column "text", as HF datasets names it
_SURROGATE = re.compile("[\ud800-\udfff]")
_TXT_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class SourceFile:
    path: Path
    format: str
    rows: int | None  # known up front for parquet and arrow files


@dataclass(frozen=True)
class Batch:
    """Rows `first_row ..` of `source`; columns[key][i] is the text of row first_row + i."""

    source: SourceFile
    first_row: int
    columns: dict[str, list[str | None]]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))


def discover(input_path: str | Path, keys: list[str]) -> list[SourceFile]:
    """The files to read, in a stable order, checked for format, emptiness and columns."""
    root = Path(input_path)
    if not present(root, "input"):
        raise UserError(f"--input {root} does not exist")
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        raise UserError(f"--input {root} is a broken symbolic link (its target does not exist)") from None
    except OSError as e:
        raise UserError(f"cannot read --input {root}: {reason(root, e)}") from None
    if stat.S_ISDIR(mode):
        try:
            entries = sorted(p for p in root.iterdir() if not p.name.startswith((".", "_")))
        except OSError as e:
            raise UserError(f"cannot list input directory {root}: {reason(root, e)}") from None
        files = []
        for p in entries:
            try:
                m = os.stat(p).st_mode
            except OSError as e:
                raise UserError(f"cannot read input file {p}: {reason(p, e)}") from None
            if stat.S_ISREG(m):
                files.append(p)
            elif not stat.S_ISDIR(m):  # subdirectories are not read; special files are refused
                raise UserError(f"input directory {root} holds {p.name}, which is {kind_of(m)}, not a regular file; remove it")
        if not files:
            raise UserError(f"input directory {root} contains no data files")
    elif stat.S_ISREG(mode):
        files = [root]
    else:
        raise UserError(f"--input {root} is {kind_of(mode)}, not a regular file; give a data file or a directory of them")
    unknown = [p.name for p in files if p.suffix.lower() not in FORMATS]
    if unknown:
        raise UserError(f"unsupported input file {unknown[0]} in {root} (use {', '.join(FORMATS)})")
    fmts = {FORMATS[p.suffix.lower()] for p in files}
    if len(fmts) > 1:
        exts = sorted({p.suffix.lower() for p in files})
        raise UserError(f"input directory {root} mixes formats ({', '.join(exts)}); keep one format per directory")
    fmt = fmts.pop()
    return [_inspect(p, fmt, keys) for p in files]


def _inspect(path: Path, fmt: str, keys: list[str]) -> SourceFile:
    regular_file(path, "input file")
    if path.stat().st_size == 0:
        raise UserError(f"input file {path} is empty")
    if fmt == "csv":
        unclosed_quote(path)
    rows: int | None = None
    try:
        if fmt == "parquet":
            meta = pq.ParquetFile(path)
            columns, rows = meta.schema_arrow.names, meta.metadata.num_rows
        elif fmt == "arrow":
            with _open_arrow(path) as reader:
                columns = reader.schema.names
            rows = None
        elif fmt == "csv":
            with pacsv.open_csv(path, convert_options=pacsv.ConvertOptions(column_types={})) as reader:
                columns = reader.schema.names
        elif fmt == "txt":
            columns = [TXT_COLUMN]
        else:
            columns = _json_columns(path)
    except UserError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(f"cannot read {fmt} file {path}: {_one_line(e)}") from None
    _require_columns(path, columns, keys)
    if rows == 0:
        raise UserError(f"input file {path} has no rows")
    return SourceFile(path=path, format=fmt, rows=rows)


_FIELD_START_QUOTE = re.compile(rb'[,\r\n]"')


def unclosed_quote(path: Path) -> None:
    """Refuse a CSV with an unbalanced quote: pyarrow (like any CSV reader that allows
    newlines in quoted values) would read the rest of the file as one value, or, if quotes
    follow, pair them up wrongly and merge rows.

    Follows pyarrow's quoting: a quote opens a value only at the start of a field, `""`
    inside a quoted value is a literal quote, and the next lone quote closes it. The scan
    jumps from quote to quote over a memory map, so it costs about one read of the file.
    """
    import mmap

    with open(path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            pos = 0
            while True:
                if pos == 0 and data[:1] == b'"':
                    opened = 0
                else:
                    m = _FIELD_START_QUOTE.search(data, max(pos - 1, 0) if pos else 0)
                    if m is None:
                        return
                    opened = m.start() + 1
                i = opened + 1
                while True:
                    close = data.find(b'"', i)
                    if close < 0:
                        line = data[:opened].count(b"\n") + 1
                        raise UserError(
                            f"{path} line {line}: the row starting here opens a quoted value that is never closed "
                            "(unbalanced \"), so the rest of the file would become one document: fix the quoting"
                        )
                    after = data[close + 1 : close + 2]
                    if after == b'"':
                        i = close + 2  # an escaped quote inside the value
                        continue
                    if after not in (b",", b"\n", b"\r", b""):
                        # `"ab"c`: valid for pyarrow (it reads abc) but never written by a CSV
                        # writer; it is what one missing quote does to the quotes after it.
                        line = data[:opened].count(b"\n") + 1
                        at = data[:close].count(b"\n") + 1
                        raise UserError(
                            f"{path} line {line}: the row starting here opens a quoted value that only closes on line {at}, "
                            "in the middle of a field (unbalanced \"), so rows would merge: fix the quoting"
                        )
                    break
                pos = close + 1


def _require_columns(path: Path, columns: list[str], keys: list[str]) -> None:
    missing = [k for k in keys if k not in columns]
    if missing:
        raise UserError(
            f"{path} has no column {', '.join(map(repr, missing))}; columns present: {', '.join(columns) or '(none)'}"
            " (choose with --json-keys)"
        )


def _json_columns(path: Path) -> list[str]:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                break
        else:
            raise UserError(f"input file {path} is empty")
    stripped = line.strip()
    if stripped.startswith(b"["):
        first = _load_json_array(path)[:1]
        return list(first[0]) if first and isinstance(first[0], dict) else []
    try:
        obj = json.loads(stripped)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} line 1 is not valid JSON: {_one_line(e)}") from None
    except RecursionError:
        raise UserError(f"{path} line 1 is nested too deeply to be a record of text") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} line 1 is not a JSON object")
    return list(obj)


def iter_batches(source: SourceFile, keys: list[str], batch_rows: int) -> Iterator[Batch]:
    reader = {"parquet": _parquet, "arrow": _arrow, "csv": _csv, "txt": _txt, "json": _json}[source.format]
    row = 0
    try:
        for columns in reader(source.path, keys, batch_rows):
            batch = Batch(source=source, first_row=row, columns=columns)
            row += len(batch)
            yield batch
    except UserError:
        raise
    except UnicodeDecodeError as e:
        raise UserError(f"{source.path} holds text that is not valid UTF-8 (near row {row + 1}): {e.reason}") from None
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(f"cannot read {source.path} (near row {row + 1}): {_one_line(e)}") from None


def _is_text(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_null(t)
        or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))
    )


def _column_lists(table: pa.RecordBatch | pa.Table, keys: list[str]) -> dict[str, list[str | None]]:
    out = {}
    for k in keys:
        col = table.column(k)
        if not _is_text(col.type):
            raise UserError(f"column {k!r} holds {col.type}, not text")
        out[k] = col.to_pylist()
    return out


def _parquet(path: Path, keys: list[str], batch_rows: int) -> Iterator[dict[str, list[str | None]]]:
    # One thread: the workers are the parallelism, and pyarrow's pool decoding a batch at a time
    # cost three times the CPU of decoding it inline (0.49 against 0.16 CPU-s on alpaca's 50k
    # rows), all of it taken from the workers' cores.
    with pq.ParquetFile(path) as f:
        for rb in f.iter_batches(batch_size=batch_rows, columns=keys, use_threads=False):
            yield _column_lists(rb, keys)


def _open_arrow(path: Path):
    # HF datasets writes the IPC stream format; plain Arrow files use the file format.
    try:
        return paipc.open_stream(pa.memory_map(str(path)))
    except pa.ArrowInvalid:
        return paipc.open_file(pa.memory_map(str(path)))


def _arrow(path: Path, keys: list[str], batch_rows: int) -> Iterator[dict[str, list[str | None]]]:
    reader = _open_arrow(path)
    batches = reader if isinstance(reader, paipc.RecordBatchStreamReader) else (
        reader.get_batch(i) for i in range(reader.num_record_batches)
    )
    for rb in batches:
        for start in range(0, rb.num_rows, batch_rows):
            yield _column_lists(rb.slice(start, batch_rows).select(keys), keys)


def _csv(path: Path, keys: list[str], batch_rows: int) -> Iterator[dict[str, list[str | None]]]:
    # Force text types: a numeric-looking column must stay the text it was written as.
    convert = pacsv.ConvertOptions(
        include_columns=keys, column_types={k: pa.large_string() for k in keys}, strings_can_be_null=False
    )
    with pacsv.open_csv(path, convert_options=convert) as reader:
        for rb in reader:
            for start in range(0, rb.num_rows, batch_rows):
                yield _column_lists(rb.slice(start, batch_rows), keys)


def _txt(path: Path, keys: list[str], batch_rows: int) -> Iterator[dict[str, list[str | None]]]:
    # Universal newlines + splitlines(): the rows HF datasets' text loader produces.
    lines: list[str | None] = []
    with open(path, encoding="utf-8", errors="strict") as f:
        while True:
            chunk = f.read(_TXT_CHUNK_BYTES)
            if not chunk:
                break
            chunk += f.readline()
            lines.extend(chunk.splitlines())
            while len(lines) >= batch_rows:
                yield {TXT_COLUMN: lines[:batch_rows]}
                lines = lines[batch_rows:]
    if lines:
        yield {TXT_COLUMN: lines}


def _json(path: Path, keys: list[str], batch_rows: int) -> Iterator[dict[str, list[str | None]]]:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"["):
        # A JSON array cannot be streamed with the standard library; it is read whole.
        records = _load_json_array(path)
        for start in range(0, len(records), batch_rows):
            yield _json_columns_of(path, records[start : start + batch_rows], keys, start)
        return
    with open(path, "rb") as f:
        pending: list[dict] = []
        row = 0
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError:
                raise UserError(f"{path} line {lineno} is not valid UTF-8") from None
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {lineno} is not valid JSON: {e.msg}") from None
            except RecursionError:
                raise UserError(f"{path} line {lineno} is nested too deeply to be a record of text") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path} line {lineno} is not a JSON object")
            pending.append(obj)
            if len(pending) >= batch_rows:
                yield _json_columns_of(path, pending, keys, row)
                row += len(pending)
                pending = []
        if pending:
            yield _json_columns_of(path, pending, keys, row)


def _json_columns_of(path: Path, records: list, keys: list[str], first_row: int) -> dict[str, list[str | None]]:
    out: dict[str, list[str | None]] = {k: [] for k in keys}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise UserError(f"{path} row {first_row + i + 1} is not a JSON object")
        for k in keys:
            if k not in rec:
                raise UserError(f"{path} row {first_row + i + 1} has no key {k!r}; keys present: {', '.join(rec)}")
            v = rec[k]
            if v is not None and not isinstance(v, str):
                raise UserError(f"{path} row {first_row + i + 1}: {k!r} is {type(v).__name__}, not text")
            if v and not v.isascii() and _SURROGATE.search(v):
                # JSON \\ud800-style escapes can encode text that is not valid Unicode.
                raise UserError(f"{path} row {first_row + i + 1}: {k!r} holds an unpaired surrogate (not valid UTF-8)")
            out[k].append(v)
    return out


def _load_json_array(path: Path) -> list:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a JSON array of records") from None
    if not isinstance(data, list):
        raise UserError(f"{path} is neither JSON lines nor a JSON array of objects")
    return data


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
