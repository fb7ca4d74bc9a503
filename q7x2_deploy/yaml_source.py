"""Load YAML and remember where each value came from, so errors can name a line.

PyYAML's composer already records a start mark for every node; walking the node tree once
gives a map from a key path such as ("job", "parallelism", "tp") to its line. Duplicate keys
are collected here too, because PyYAML's loader silently keeps the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


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


def _walk(node: yaml.Node, path: KeyPath, doc: YamlDocument) -> None:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            child = path + (key,)
            if key in seen:
                doc.duplicate_keys.append((child, key_node.start_mark.line + 1))
            seen.add(key)
            _walk(value_node, child, doc)
            doc.lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), doc)


def parse_yaml(text: str) -> YamlDocument:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = e.problem or e.context or "invalid YAML"
        raise YamlSyntaxError(f"not valid YAML: {problem}", line) from None
    except yaml.YAMLError as e:
        raise YamlSyntaxError(f"not valid YAML: {str(e).splitlines()[0]}", None) from None
    except RecursionError:
        raise YamlSyntaxError("not valid YAML: nested too deeply", None) from None
    doc = YamlDocument(data=data)
    if node is not None:
        _walk(node, (), doc)
    return doc


def read_yaml_file(path: Path) -> YamlDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlSyntaxError("no such file", None) from None
    except IsADirectoryError:
        raise YamlSyntaxError("is a directory, expected a YAML file", None) from None
    except UnicodeDecodeError:
        raise YamlSyntaxError("not UTF-8 text", None) from None
    except OSError as e:
        raise YamlSyntaxError(f"cannot read: {e.strerror}", None) from None
    return parse_yaml(text)
