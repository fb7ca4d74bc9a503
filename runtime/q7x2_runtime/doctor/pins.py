"""The pins file: what an image was built to hold, one component per entry.

The Dockerfile templates write it from the same values they install (q7x2_deploy.render);
`doctor --record` fills the entries left open (`want` null, `record` true) from what the
build actually installed, e.g. the CANN toolkit of the base image or the cpu image's
transformers, so a running container can be compared with the image it came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from q7x2_runtime.errors import UserError

PINS_PATH = Path("/usr/local/share/q7x2/pins.json")
FORMAT = 1

# dist: an installed Python distribution (importlib.metadata); python: the interpreter;
# cann: the CANN toolkit's version file; megatron: megatron/core/package_info.py under `path`;
# source: the record build-image leaves beside vendored sources (`path`/.q7x2-source.json).
Kind = Literal["dist", "python", "cann", "megatron", "source"]
KINDS: tuple[str, ...] = ("dist", "python", "cann", "megatron", "source")


@dataclass
class Pin:
    name: str  # as printed: "torch", "CANN", "Megatron core"
    kind: Kind
    want: str | None  # None: any version, but the component must be there
    dist: str | None = None  # kind dist: the distribution name
    path: str | None = None  # kind megatron / source: where the sources are
    record: bool = False  # `doctor --record` may fill `want` from what is installed

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}")
        if self.kind == "dist" and not self.dist:
            raise ValueError(f"{self.name}: a dist pin needs `dist`")
        if self.kind in ("megatron", "source") and not self.path:
            raise ValueError(f"{self.name}: a {self.kind} pin needs `path`")


@dataclass
class Pins:
    flavor: str
    components: list[Pin] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "flavor": self.flavor,
                           "components": [{k: v for k, v in asdict(p).items() if v is not None or k == "want"}
                                          for p in self.components]}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "pins") -> Pins:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a format-{FORMAT} pins file")
            comps = data["components"]
            if not isinstance(comps, list):
                raise ValueError("components is not a list")
            return cls(flavor=str(data["flavor"]), components=[Pin(**c) for c in comps])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{where}: unreadable pins ({e}); rebuild the image with `q7x2-deploy build-image`") from None


def load_pins(path: Path = PINS_PATH) -> Pins:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no pins file (an image built before `doctor` existed?); "
                        "rebuild it with `q7x2-deploy build-image`, or pass --pins FILE") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the pins file ({e.strerror})") from None
    return Pins.from_json(text, str(path))


def save_pins(pins: Pins, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(pins.to_json(), encoding="utf-8")
    tmp.replace(path)
