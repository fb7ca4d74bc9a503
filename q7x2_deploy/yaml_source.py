"""Load YAML and remember where each value came from, so errors can name a line.

PyYAML's composer already records a start mark for every node; walking the node tree once
gives a map from a key path such as ("job", "parallelism", "tp") to its line. Duplicate keys
are collected here too, because PyYAML's loader silently keeps the last one.

The file is untrusted: only a regular file of bounded size is read, and the node graph is
checked before it is turned into Python values. YAML aliases make the graph a DAG (or a cycle),
so a tiny document can stand for a billion values ("billion laughs") or for an infinitely deep
one (`&a [*a]`); both are refused here with one line instead of exhausting memory or the stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from q7x2_runtime.bounded_read import read_regular_file

KeyPath = tuple[str | int, ...]

# An inventory is a few kilobytes; a megabyte is far beyond any real one.
MAX_FILE_BYTES = 1 << 20
# Values after alias expansion, and nesting depth: the real inventory has ~150 and depth 5,
# one of 1024 hosts about 15,000.
MAX_NODES = 50_000
MAX_DEPTH = 32

# libyaml's event parser is a state machine (no recursion, so no stack to exhaust) and ten times
# faster than PyYAML's; the nodes are composed here in Python, counted and depth-checked as they
# are made, so a document of a million values is refused after the first MAX_NODES.
try:
    from yaml._yaml import CParser as _EventParser

    _EVENT_BASES: tuple[type, ...] = (_EventParser,)
except ImportError:  # PyYAML without libyaml: the pure-Python parser, slower but as bounded
    _EventParser = None  # type: ignore[misc,assignment]
    _EVENT_BASES = (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)


class _NumberResolver(yaml.resolver.Resolver):
    """YAML 1.1's implicit numbers without its surprises: `1:40` is not the sexagesimal 100 and
    `010` is not the octal 8 (both stay text, which the typed fields then refuse), while `1e-6`
    is the float YAML 1.2 reads it as (1.1 leaves it text)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
    }


_NumberResolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?0o[0-7_]+)$"), list("-+0123456789")
)
_NumberResolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


class _BoundedLoader(yaml.composer.Composer, *_EVENT_BASES, yaml.constructor.SafeConstructor, _NumberResolver):  # type: ignore[misc]
    def __init__(self, text: str) -> None:
        if _EventParser is None:
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        else:
            _EventParser.__init__(self, text)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        _NumberResolver.__init__(self)
        self._composed = 0
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        self._composed += 1
        if self._composed > MAX_NODES:
            raise YamlSyntaxError(f"holds more than {MAX_NODES} values: an inventory is never that large", self.peek_event().start_mark.line + 1)
        if self._depth >= MAX_DEPTH:
            raise YamlSyntaxError(f"nested more than {MAX_DEPTH} levels deep: not an inventory", self.peek_event().start_mark.line + 1)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


@dataclass
class YamlDocument:
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    duplicate_keys: list[tuple[KeyPath, int]] = field(default_factory=list)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of the deepest known prefix of path (1-based)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _key_of(key_node: yaml.Node) -> Any:
    # Scalar keys keep their text; a complex key (`? [a, b]`) is named by its kind, never
    # expanded (it could be an alias bomb of its own).
    return key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{getattr(key_node, 'id', 'complex')} key>"


def _walk(root: yaml.Node, doc: YamlDocument) -> None:
    """Record lines and duplicate keys, bounding expanded size and depth; refuse cycles.

    Iterative, so depth is limited by MAX_DEPTH and not by Python's stack. Every node reached is
    counted each time it is reached, which is exactly the size the constructed data would have.
    """
    count = 0
    # (node, path, ids of the collections above it): a node among its own ancestors is a cycle.
    stack: list[tuple[yaml.Node, KeyPath, frozenset[int]]] = [(root, (), frozenset())]
    while stack:
        node, path, above = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise YamlSyntaxError(
                f"expands to more than {MAX_NODES} values (aliases repeating aliases?): an inventory is never that large",
                _line(node),
            )
        if len(path) > MAX_DEPTH:
            raise YamlSyntaxError(f"nested more than {MAX_DEPTH} levels deep: not an inventory", _line(node))
        doc.lines.setdefault(path, _line(node))
        if isinstance(node, yaml.ScalarNode):
            continue
        if id(node) in above:
            raise YamlSyntaxError("an alias refers to a collection that contains it (a cycle such as &a [*a])", _line(node))
        inner = above | {id(node)}
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            children = []
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    # Walk complex keys too: their size counts, and they may hide a cycle.
                    children.append((key_node, path + ("<key>",), inner))
                key = _key_of(key_node)
                child = path + (key,)
                if key == "<<" and key_node.tag == "tag:yaml.org,2002:merge":
                    pass  # merge keys may repeat by design
                elif key in seen:
                    doc.duplicate_keys.append((child, _line(key_node)))
                seen.add(key)
                doc.lines[child] = _line(key_node)
                children.append((value_node, child, inner))
            stack.extend(reversed(children))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, path + (i,), inner) for i, item in reversed(list(enumerate(node.value))))


def _runaway_quote(text: str, before_line: int) -> tuple[int, int] | None:
    """(start, end) lines of a quoted string spanning several lines before `before_line`.

    A missing closing quote makes the scanner swallow the following lines until the next quote
    character, so the error surfaces far below the real mistake. Multi-line quoted strings are
    legal but never needed in an inventory, so one ending near the error is the likely cause.
    """
    found = None
    try:
        for tok in yaml.scan(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if tok.start_mark.line + 1 > before_line:
                break
            if isinstance(tok, yaml.ScalarToken) and tok.style in ("'", '"') and tok.end_mark.line > tok.start_mark.line:
                found = (tok.start_mark.line + 1, tok.end_mark.line + 1)
    except (yaml.YAMLError, RecursionError):
        pass
    return found


def _syntax_error(e: yaml.MarkedYAMLError, text: str) -> YamlSyntaxError:
    problem = e.problem or e.context or "invalid YAML"
    context = e.context or ""
    # An unclosed quote or flow collection is found at the end of the file; the place to fix is
    # where it was opened, which PyYAML keeps as the context mark.
    opened = e.context_mark is not None and context.startswith(("while scanning a quoted scalar", "while parsing a flow"))
    mark = e.context_mark if opened else (e.problem_mark or e.context_mark)
    line = mark.line + 1 if mark is not None else None
    if opened and "quoted" in context:
        return YamlSyntaxError("not valid YAML: a quoted string opened here is never closed", line)
    if opened:
        return YamlSyntaxError(f"not valid YAML: a [ or {{ opened here is never closed ({problem})", line)
    if context and context not in problem:
        problem = f"{problem} ({context.removeprefix('while ')})"
    if line is not None:
        runaway = _runaway_quote(text, line)
        if runaway is not None:
            start, end = runaway
            return YamlSyntaxError(
                f"not valid YAML at line {line}: {problem}; the quoted string opened here runs on to line {end}: is its closing quote missing?",
                start,
            )
    return YamlSyntaxError(f"not valid YAML: {problem}", line)


def parse_yaml(text: str) -> YamlDocument:
    if len(text) > MAX_FILE_BYTES:
        raise YamlSyntaxError(f"{len(text)} characters: larger than {MAX_FILE_BYTES} bytes, not an inventory", None)
    loader = None
    try:
        loader = _BoundedLoader(text)
        node = loader.get_single_node()
        doc = YamlDocument(data=None)
        if node is not None:
            _walk(node, doc)
            doc.data = loader.construct_document(node)
    except YamlSyntaxError:
        raise
    except yaml.MarkedYAMLError as e:
        raise _syntax_error(e, text) from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise YamlSyntaxError(f"not valid YAML: character U+{e.character:04X} is not allowed in YAML text", line) from None
    except yaml.YAMLError as e:
        raise YamlSyntaxError(f"not valid YAML: {(str(e).splitlines() or ['?'])[0]}", None) from None
    except RecursionError:
        raise YamlSyntaxError("not valid YAML: nested too deeply", None) from None
    except (ValueError, OverflowError) as e:
        # The constructor turns timestamps and numbers into Python values and may fail on odd ones.
        raise YamlSyntaxError(f"not valid YAML: a value cannot be read ({e})", None) from None
    finally:
        if loader is not None:
            loader.dispose()
    return doc


def read_yaml_file(path: Path) -> YamlDocument:
    try:
        raw = read_regular_file(path, MAX_FILE_BYTES, "a YAML file")
    except ValueError as e:
        raise YamlSyntaxError(str(e), None) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise YamlSyntaxError(f"not UTF-8 text (byte {e.start})", line) from None
    return parse_yaml(text)
