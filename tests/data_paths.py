"""Every path (tuple of keys and indices) into parsed YAML/JSON data: where hostile tests put values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def data_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from data_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from data_paths(v, prefix + (i,))
