"""Checks for text that ends up in argv, environment variables or file paths on remote hosts.

Commands are built as argv lists and quoted once, so quoting alone would be enough for the
shell; these checks exist because some values also become file names, container names or
environment entries, where newlines, NULs and shell metacharacters are never intended.
"""

from __future__ import annotations

import re

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Paths: printable, no shell metacharacters, no whitespace, no '..' components.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./@%+=:,~-]+$")


def check_env_name(name: str) -> None:
    if not _ENV_NAME.match(name):
        raise ValueError(f"environment variable name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")


def check_safe_value(value: str) -> None:
    """Environment values may hold spaces and most punctuation, never control characters."""
    bad = [c for c in value if ord(c) < 0x20 or ord(c) == 0x7F]
    if bad:
        raise ValueError(f"value {value!r} contains a control character (newline, NUL, ...)")


def check_safe_path(path: str) -> None:
    if not _SAFE_PATH.match(path):
        raise ValueError(
            f"path {path!r} may contain only letters, digits and _ . / @ % + = : , ~ - "
            "(no spaces, quotes or shell metacharacters)"
        )
    if any(part == ".." for part in path.split("/")):
        raise ValueError(f"path {path!r} must not contain '..'")


def check_env_mapping(env: dict[str, str]) -> dict[str, str]:
    """Names and values of an environment mapping (inventory `env:` sections)."""
    for name, value in env.items():
        check_env_name(name)
        check_safe_value(value)
    return env
