"""Checks for text that ends up in argv, environment variables or file paths on remote hosts.

Commands are built as argv lists and quoted once, so quoting alone would be enough for the
shell; these checks exist because some values also become file names, container names or
environment entries, where newlines, NULs and shell metacharacters are never intended.

Every pattern is applied with `fullmatch`: `re.match(r"^...$")` also accepts a value ending
in a newline, because `$` matches before a final "\\n".
"""

from __future__ import annotations

import re
import unicodedata

# Linux limits: PATH_MAX counts the terminating NUL, NAME_MAX is one path component, and
# MAX_ARG_STRLEN bounds each single argv or environment string (NUL included).
PATH_MAX = 4096
NAME_MAX = 255
MAX_ARG_STRLEN = 131072

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
# Paths: printable, no shell metacharacters, no whitespace, no '..' components.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./@%+=:,~-]+")
# Unicode categories that print nothing or move text around: controls (C0, DEL, C1), format
# characters (bidi overrides such as U+202E, zero-width joiners), line and paragraph
# separators (U+2028/9), surrogates, private use and unassigned code points.
_NON_PRINTING = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def show(value: object, limit: int = 60) -> str:
    """A value for an error message: repr (so newlines stay escaped), cut to `limit` characters."""
    text = repr(value)
    if len(text) <= limit:
        return text
    length = f" ({len(value)} characters)" if isinstance(value, str | list | dict) else ""
    return f"{text[:limit]}...{length}"


def _is_non_printing(c: str) -> bool:
    cat = unicodedata.category(c)
    return cat in _NON_PRINTING or (cat == "Zs" and c != " ")


def non_printing(text: str) -> list[str]:
    """The characters of text that would not print as themselves (each once, in order)."""
    return list(dict.fromkeys(c for c in text if _is_non_printing(c)))


def escape_non_printing(text: str) -> str:
    """text with every non-printing character written as an escape, so it stays one line."""
    if text.isprintable():
        return text
    return "".join(repr(c)[1:-1] if _is_non_printing(c) else c for c in text)


def check_env_name(name: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(f"environment variable name {show(name)} must match [A-Za-z_][A-Za-z0-9_]* (at most 255 characters)")
    return name


def check_safe_value(value: str) -> str:
    """Environment values may hold spaces and most punctuation, never non-printing characters."""
    bad = non_printing(value)
    if bad:
        names = ", ".join(f"U+{ord(c):04X}" for c in bad[:3])
        raise ValueError(f"value {show(value)} contains a non-printing character ({names}: newline, NUL, bidi override, ...)")
    return value


def check_safe_path(path: str) -> None:
    if not _SAFE_PATH.fullmatch(path):
        raise ValueError(
            f"path {show(path)} may contain only letters, digits and _ . / @ % + = : , ~ - "
            "(no spaces, quotes or shell metacharacters)"
        )
    if path.startswith("-"):
        raise ValueError(f"path {show(path)} must not start with '-' (it would read as an option)")
    if any(part == ".." for part in path.split("/")):
        raise ValueError(f"path {show(path)} must not contain '..'")
    if len(path) >= PATH_MAX:
        raise ValueError(f"path {show(path)} is {len(path)} characters; Linux takes at most {PATH_MAX - 1}")
    longest = max(path.split("/"), key=len)
    if len(longest) > NAME_MAX:
        raise ValueError(f"path {show(path)} has a component of {len(longest)} characters; Linux takes at most {NAME_MAX}")


def check_env_mapping(env: dict[str, str]) -> dict[str, str]:
    """Names and values of an environment mapping (inventory `env:` sections)."""
    if len(env) > 256:
        raise ValueError(f"{len(env)} variables: at most 256")
    for name, value in env.items():
        check_env_name(name)
        check_safe_value(value)
    return check_env_sizes(env)


def check_env_sizes(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        size = len(f"{name}={value}".encode())
        if size >= MAX_ARG_STRLEN:
            raise ValueError(f"{name}: {size} bytes; one `docker run -e` argument takes at most {MAX_ARG_STRLEN - 1}")
    return env
