"""transformers' lazy-import tables kept between processes (preprocess/import_structure.py).

The keeping is checked against a fake `define_import_structure` over a small tree (what makes
an entry stale, damaged or unwritable), and for real: fresh interpreters importing the
installed transformers, the tables kept by one equal to what transformers computes in the
next, which reads no model file to get them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from q7x2_runtime.preprocess import import_structure
from q7x2_runtime.preprocess.import_structure import decode, encode, keeping, tree_signature
from tests.preprocess.conftest import write_tokenizer

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> Path:
    (root / "models" / "alpha").mkdir(parents=True)
    (root / "models" / "alpha" / "tokenization_alpha.py").write_text("__all__ = ['AlphaTokenizer']\n")
    (root / "models" / "beta.py").write_text("__all__ = ['Beta']\n")
    code = root / "import_utils.py"
    code.write_text("# the scanning code\n")
    return root


class _Scanner:
    """A stand-in for transformers' scan: reads the tree, counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module_path, prefix=None):
        self.calls += 1
        out: dict = {}
        for path in sorted(Path(module_path).rglob("*.py")):
            names = set(json.loads(path.read_text().split("=", 1)[1].replace("'", '"')))
            out.setdefault(frozenset({"tokenizers"} if "tokenization" in path.name else set()), {})[
                (f"{prefix}." if prefix else "") + path.stem] = names
        return out


def _keep(root: Path, reads: list[Path], write: Path | None, strict: bool = False):
    scanner = _Scanner()
    return scanner, keeping(scanner, str(root / "import_utils.py"), reads, write, strict)


def test_a_kept_table_answers_the_next_process_until_a_file_changes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "pkg")
    models, cache = root / "models", tmp_path / "cache"
    first, define = _keep(root, [cache], cache)
    table = define(models, "models")
    assert first.calls == 1 and table == _Scanner()(models, "models")
    assert define(models, "models") is table  # one object per call, as transformers' lru_cache gives

    again, define = _keep(root, [cache], cache)  # a new process
    assert define(models, "models") == table and again.calls == 0
    assert define(str(models), "other") is not None and again.calls == 1  # another prefix: its own entry

    beta = models / "beta.py"
    for change in (lambda: beta.write_text("__all__ = ['Gamma']\n"),  # size changes
                   lambda: os.utime(beta, ns=(0, 10**9)),  # mtime only
                   lambda: (models / "alpha" / "new.py").write_text("__all__ = []\n"),  # a new file, deeper
                   lambda: (root / "import_utils.py").write_text("# the scanning code, changed\n")):
        change()
        scanner, define = _keep(root, [cache], cache)
        assert define(models, "models") == _Scanner()(models, "models") and scanner.calls == 1, change
        scanner, define = _keep(root, [cache], cache)
        define(models, "models")
        assert scanner.calls == 0  # and kept again


def test_the_first_root_wins_and_a_damaged_or_unwritable_entry_costs_only_the_scan(tmp_path: Path) -> None:
    root = _tree(tmp_path / "pkg")
    models, image, user = root / "models", tmp_path / "image", tmp_path / "user"
    _keep(root, [], image)[1](models)
    scanner, define = _keep(root, [image, user], user)
    assert define(models) == _Scanner()(models) and scanner.calls == 0
    assert not user.exists()  # nothing copied: the image's record is read where it is

    (entry,) = (image / "transformers-imports").iterdir()
    for damage in ("{", json.dumps({"structure": "x"}), json.dumps([1, 2])):
        entry.write_text(damage)
        scanner, define = _keep(root, [image], image)
        assert define(models) == _Scanner()(models) and scanner.calls == 1
        assert json.loads(entry.read_text())["tree"] == tree_signature(models)  # written afresh

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory would go")
    scanner, define = _keep(root, [blocked], blocked)
    assert define(models) == _Scanner()(models) and scanner.calls == 1
    with pytest.raises(OSError):  # the image build: a record that cannot be written fails it
        _keep(root, [], blocked, strict=True)[1](models)
    assert not [p for p in tmp_path.rglob(".*.json.*")], "no temporary file left behind"


def test_a_call_or_a_table_of_another_shape_goes_to_transformers_itself(tmp_path: Path) -> None:
    root = _tree(tmp_path / "pkg")
    seen = []
    define = keeping(lambda *a, **k: seen.append((a, k)) or {}, str(root / "import_utils.py"), [], tmp_path / "c")
    define(root / "models", prefix="models", new_option=True)
    define(42)
    assert seen == [((root / "models",), {"prefix": "models", "new_option": True}), ((42,), {})]
    assert not (tmp_path / "c").exists()
    for odd in ({frozenset(): {"m": {1}}}, {frozenset(): {1: {"x"}}}, {frozenset([1]): {}}, [("m", "x")]):
        define = keeping(lambda *a, odd=odd: odd, str(root / "import_utils.py"), [], tmp_path / "c", strict=True)
        assert define(root / "models") == odd  # answered, never kept (json would turn 1 into "1")
    assert not (tmp_path / "c").exists()


@given(st.dictionaries(st.frozensets(st.text(max_size=8), max_size=3),
                       st.dictionaries(st.text(max_size=12), st.sets(st.text(max_size=12), max_size=4), max_size=4),
                       max_size=4))
def test_tables_round_trip_through_json(table) -> None:
    assert decode(json.loads(json.dumps(encode(table)))) == table


_PROCESS = """
import json, sys
from pathlib import Path
from q7x2_runtime.preprocess import import_structure
import_structure.without_torch()
share, user, tok_dir = map(Path, sys.argv[1:4])
with import_structure.kept([share, user], user):
    from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(str(tok_dir))
import transformers.utils.import_utils as iu
define = iu.define_import_structure
keeper = define.keeper
calls = [(str(p), x) for p, x in keeper.asked]
scans_before = iu.create_import_structure_from_path.cache_info().misses
same = all(define(p, x) == define.__wrapped__.__wrapped__(p, x) for p, x in calls)
print(json.dumps({"scans": scans_before, "asked": len(calls), "stored": [str(p) for p in keeper.stored],
                  "same": same, "ids": tok("Hello world, naïve café!")["input_ids"]}))
"""


def _fresh_process(share: Path, user: Path, tok_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'runtime'}{os.pathsep}{REPO}", "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-c", _PROCESS, str(share), str(user), str(tok_dir)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_installed_transformers_tables_are_kept_exactly(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    tok_dir = write_tokenizer(tmp_path / "tok")
    share, user = tmp_path / "share", tmp_path / "user"
    first = _fresh_process(share, user, tok_dir)
    if not first["asked"]:
        pytest.skip("this transformers builds no lazy-import table on import")
    assert first["scans"] > 0 and len(first["stored"]) == first["asked"] and first["same"]
    second = _fresh_process(share, user, tok_dir)
    assert second["scans"] == 0, "a kept table was scanned again"
    assert second["same"] and not second["stored"] and second["ids"] == first["ids"]


def test_the_image_build_records_what_a_new_containers_first_run_reads(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("transformers")
    share = tmp_path / "share"
    monkeypatch.setenv("Q7X2_SHARE_DIR", str(share))
    recorded = import_structure.record_installation()
    if not recorded:
        pytest.skip("this transformers builds no lazy-import table on import")
    assert all(p.parent == share / "transformers-imports" and p.is_file() for p in recorded)
    run = _fresh_process(share, tmp_path / "user", write_tokenizer(tmp_path / "tok"))
    # The model tables come from the record; only a model's own small table (from_pretrained
    # imports its package) is scanned and stored in the user's cache.
    assert run["same"] and len(run["stored"]) <= run["asked"] - len(recorded)
    assert all(Path(p).parent == tmp_path / "user" / "transformers-imports" for p in run["stored"])
