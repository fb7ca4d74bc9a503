"""Where templates/ and images/ are: inside the installed package, or beside it in a checkout.

A wheel carries them as q7x2_deploy/templates and q7x2_deploy/images (see pyproject's
package-dir); an editable install or a plain checkout has them at the repository's top level.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{name}/ is missing from this q7x2-deploy install; reinstall the package")


def templates_dir() -> Path:
    return resource_dir("templates")


def images_dir() -> Path:
    return resource_dir("images")


@cache
def template_env(*, html: bool = False) -> jinja2.Environment:
    """The one jinja2 environment for templates/: undefined names fail the render. Shell scripts
    and Dockerfiles are rendered verbatim (their values are quoted by the code that passes
    them); HTML is autoescaped, since host log lines end up in it."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=html,
    )
