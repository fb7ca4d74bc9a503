"""transformers' lazy-import table, kept between processes.

transformers (5.x) builds the table behind its lazy modules (`define_import_structure`: which
module exports which name, and what each needs) by reading the source of every model file:
about 2,600 files, twice (for `transformers` and for `transformers.models`), 0.6 CPU-seconds
of the 1.8 the confirming process spends loading AutoTokenizer, all of it on the first
document's path. The table is a pure function of those files and of the code that reads
them, so it is kept: keyed by the name, size and mtime of every file under the scanned
directory and of the module holding that code, the same evidence Python trusts when it runs a
module's cached bytecode instead of its source, and computed afresh when anything differs.
Entries are plain JSON (never pickle: the user's cache is not trusted to run code).

The image build records the table (`doctor --record`), so a new container's first run finds
it; otherwise the first process that loads AutoTokenizer stores it in the user's cache.
Nothing here changes what transformers computes: a kept entry is used only when the files it
was computed from are, by that evidence, unchanged, and the call is answered by transformers
itself otherwise. A transformers that has no such function, or calls it differently, is simply
imported as it is.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from q7x2_runtime.preprocess.cache import cache_root, installation_root

FORMAT = 1
_MODULE = "transformers.utils.import_utils"  # where define_import_structure lives
_SUBDIR = "transformers-imports"

Structure = dict[frozenset[str], dict[str, set[str]]]


def tree_signature(directory: Path) -> str:
    """sha256 of every entry under `directory` (recursively, as transformers walks it: names,
    kinds, and each file's size and mtime), __pycache__ left out as transformers does."""
    digest = hashlib.sha256()

    def walk(path: str) -> None:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name == "__pycache__":
                continue
            if entry.is_dir():
                digest.update(f"d{entry.name}\0".encode("utf-8", "surrogateescape"))
                walk(entry.path)
                digest.update(b"u")
            else:
                st = entry.stat()
                digest.update(f"f{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))

    walk(str(directory))
    return digest.hexdigest()


def _file_signature(path: str) -> str:
    st = os.stat(path)
    return f"{path}\0{st.st_size}\0{st.st_mtime_ns}"


def encode(structure: Structure) -> list[list[Any]]:
    """The table as JSON values; TypeError for a table of any other shape (a transformers
    that builds them differently), which is then simply not kept."""

    def strings(values: object) -> list[str]:
        if not isinstance(values, (set, frozenset)) or not all(isinstance(v, str) for v in values):
            raise TypeError("not a set of names")
        return sorted(values)

    if not isinstance(structure, dict):
        raise TypeError("not a table")
    out = []
    for backends, modules in structure.items():
        if not isinstance(modules, dict) or not all(isinstance(m, str) for m in modules):
            raise TypeError("not a table of modules")
        out.append([strings(backends), {module: strings(names) for module, names in modules.items()}])
    return out


def decode(data: object) -> Structure:
    """The table `encode` wrote; ValueError for anything else."""
    if not isinstance(data, list):
        raise ValueError("not a list")
    out: Structure = {}
    for item in data:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list) and isinstance(item[1], dict)):
            raise ValueError("not a [backends, modules] pair")
        backends, modules = item
        if not all(isinstance(b, str) for b in backends) or frozenset(backends) in out:
            raise ValueError("bad backends")
        table: dict[str, set[str]] = {}
        for module, names in modules.items():
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise ValueError("bad names")
            table[module] = set(names)
        out[frozenset(backends)] = table
    return out


def _entry_name(module_path: str, prefix: str | None) -> str:
    key = json.dumps([FORMAT, module_path, prefix])
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".json"


class _Keeper:
    """define_import_structure answered from kept entries when their evidence still holds."""

    def __init__(self, real: Callable[..., Structure], code_file: str, reads: Sequence[Path], write: Path | None,
                 strict: bool = False) -> None:
        self.real, self.strict = real, strict
        self.code = _file_signature(code_file)
        self.reads = [root / _SUBDIR for root in reads]
        self.write = write / _SUBDIR if write is not None else None
        self._trees: dict[str, str] = {}  # directory -> signature, once per process
        self.asked: list[tuple[str, str | None]] = []  # the calls it answered or stored
        self.stored: list[Path] = []

    def _evidence(self, module_path: str, prefix: str | None) -> dict[str, Any]:
        # as create_import_structure_from_path: a file stands for its directory
        directory = os.path.dirname(module_path) if os.path.isfile(module_path) else module_path
        if directory not in self._trees:
            self._trees[directory] = tree_signature(Path(directory))
        return {"format": FORMAT, "path": module_path, "prefix": prefix, "code": self.code, "tree": self._trees[directory]}

    def _find(self, name: str, evidence: dict[str, Any]) -> Structure | None:
        for root in self.reads:
            try:
                data = json.loads((root / name).read_text(encoding="utf-8"))
                if isinstance(data, dict) and {k: data.get(k) for k in evidence} == evidence:
                    return decode(data.get("structure"))
            except (OSError, ValueError):
                continue  # missing, unreadable or damaged: answered afresh
        return None

    def _store(self, name: str, evidence: dict[str, Any], structure: Structure) -> None:
        if self.write is None:
            return
        try:
            text = json.dumps({**evidence, "structure": encode(structure)})
        except TypeError:
            return  # a table of another shape: left to transformers every time
        path = self.write / name
        tmp = path.with_name(f".{name}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)  # a reader never sees half an entry
        except OSError:
            with contextlib.suppress(OSError):  # no directory to leave it in, at worst
                tmp.unlink(missing_ok=True)
            if self.strict:  # the image build: a record that cannot be written fails it
                raise
            return  # else an unwritable cache only costs the next process the scan
        self.stored.append(path)

    def __call__(self, *args: Any, **kwargs: Any) -> Structure:
        try:  # the call transformers makes: (module_path[, prefix])
            module_path, prefix = _arguments(*args, **kwargs)
        except TypeError:
            return self.real(*args, **kwargs)
        try:
            evidence = self._evidence(module_path, prefix)
        except OSError:
            return self.real(*args, **kwargs)
        self.asked.append((module_path, prefix))
        name = _entry_name(module_path, prefix)
        kept = self._find(name, evidence)
        if kept is not None:
            return kept
        structure = self.real(*args, **kwargs)
        self._store(name, evidence, structure)
        return structure


def _arguments(module_path: object, prefix: object = None) -> tuple[str, str | None]:
    path = os.fspath(module_path) if isinstance(module_path, (str, os.PathLike)) else None
    if not isinstance(path, str) or not (prefix is None or isinstance(prefix, str)):
        raise TypeError("not a call this module knows")
    return path, prefix


def keeping(real: Callable[..., Structure], code_file: str, reads: Sequence[Path], write: Path | None,
            strict: bool = False) -> Callable[..., Structure]:
    """`real` (a define_import_structure), answered from entries under `reads` (first match
    wins) and storing what it computes under `write`. Cached per arguments like the original
    (functools.lru_cache), so callers see one object per table as they did. Its `keeper`
    attribute tells what was asked and stored."""
    keeper = _Keeper(real, code_file, reads, write, strict)

    @functools.lru_cache(maxsize=None)
    def define_import_structure(*args, **kwargs):  # type: ignore[no-untyped-def]
        return keeper(*args, **kwargs)

    functools.update_wrapper(define_import_structure, real)
    define_import_structure.keeper = keeper  # type: ignore[attr-defined]
    return define_import_structure


class _Finder(importlib.abc.MetaPathFinder):
    """Runs transformers' import_utils as usual, then puts the keeping version of its
    define_import_structure in place before anything imports the name from it."""

    def __init__(self, reads: Sequence[Path], write: Path | None, strict: bool) -> None:
        self.reads, self.write, self.strict = list(reads), write, strict

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != _MODULE:
            return None
        _remove(self)  # one module, once
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader = spec.loader if spec is not None else None
        if spec is None or spec.origin is None or not isinstance(loader, importlib.machinery.SourceFileLoader):
            return spec
        run = loader.exec_module
        reads, write, strict, origin = self.reads, self.write, self.strict, spec.origin

        def exec_module(module):  # type: ignore[no-untyped-def]
            run(module)
            real = getattr(module, "define_import_structure", None)
            if callable(real):
                module.define_import_structure = keeping(real, origin, reads, write, strict)

        loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's own loader
        return spec


def _remove(finder: _Finder) -> None:
    try:
        sys.meta_path.remove(finder)
    except ValueError:
        pass


@contextlib.contextmanager
def kept(reads: Sequence[Path], write: Path | None, strict: bool = False) -> Iterator[None]:
    """Within: a first import of transformers uses kept tables (see the module doc). Nothing
    happens if transformers' import_utils is already imported."""
    if _MODULE in sys.modules:
        yield
        return
    finder = _Finder(reads, write, strict)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        _remove(finder)


def for_this_process() -> contextlib.AbstractContextManager[None]:
    """`kept` with what this process may use: the image build's record, then the user's cache
    (where new tables go). Q7X2_PREPROCESS_CACHE=0 means neither, as for every cached verdict."""
    user = cache_root()
    if user is None:
        return contextlib.nullcontext()
    return kept([installation_root(), user], user)


def without_torch() -> None:
    """Make transformers see no torch (or torch_npu): tokenizers never use it, and importing it
    costs seconds of CPU (more with torch_npu). A None entry makes `import` fail and
    importlib.util.find_spec report the package missing, which is how transformers asks."""
    for name in ("torch", "torch_npu", "torchvision", "torchaudio", "tensorflow", "jax", "flax"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None on purpose: see above


def _record() -> None:
    """In a fresh interpreter (see record_installation): import transformers as the confirming
    process does, computing every table afresh into the installation's record."""
    without_torch()
    try:
        with kept([], installation_root(), strict=True):
            import transformers  # noqa: F401  # the `models` table
            from transformers import AutoTokenizer  # noqa: F401  # `transformers.models`' own, and `auto`'s
    except ImportError:
        print(json.dumps([]))
        return
    import transformers.utils.import_utils as import_utils

    keeper = getattr(import_utils.define_import_structure, "keeper", None)
    print(json.dumps([str(p) for p in keeper.stored] if keeper is not None else []))


def record_installation() -> list[Path]:
    """Record the installed transformers' tables for every container of this image; returns the
    entries written (none for a transformers without them). Raises OSError when the record
    cannot be written (the build must fail then). A fresh interpreter, because a table is only
    computed, and so recorded, where transformers is first imported."""
    import subprocess

    code = "from q7x2_runtime.preprocess.import_structure import _record; _record()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
        raise OSError(f"recording transformers' import tables failed: {last}")
    return [Path(p) for p in json.loads(r.stdout.strip().splitlines()[-1])]
