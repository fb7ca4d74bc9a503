"""The Python requirements of the ascend image's sources, as their release tags declare them.

build-image reads MindSpeed/requirements.txt and MindSpeed-LLM/requirements.txt from --vendor
when it is given (the sources the image is built from decide); without it (filling a wheelhouse
before the sources are at hand) these lists, taken from MindSpeed 2.0.0_core_r0.8.0 and
MindSpeed-LLM 2.0.0, stand in. A test compares them with the vendored files when both exist.
"""

from __future__ import annotations

from pathlib import Path

MINDSPEED_LLM_2_0_0 = (
    "numpy>=1.19.2,<2.0.0", "transformers==4.43.2", "transformers_stream_generator", "sympy", "decorator",
    "scipy", "sentencepiece", "einops", "datasets>=2.16.0", "pybind11", "accelerate", "six", "protobuf",
    "peft==0.7.1", "tiktoken", "ray==2.10.0", "tensordict==0.1.2", "hydra-core==1.3.2", "codetiming",
    "bitsandbytes-npu-beta==0.45.3", "word2number", "latex2sympy2", "antlr4-python3-runtime==4.9.*",
)
MINDSPEED_2_0_0_CORE_R0_8_0 = (
    "pybind11", "ninja", "wheel", "numpy", "six", "regex", "decorator", "attrs", "psutil", "pyyaml",
    "protobuf", "einops", "scipy", "sentencepiece", "pytest", "tokenizers<=0.20.3", "transformers>=4.43.2",
    "gpytorch", "pandas", "scikit-learn", "SQLAlchemy", "pulp==3.0.0", "highspy==1.9.0",
)
# `pip install -e /opt/MindSpeed` builds it in an isolated environment, from the wheelhouse too.
BUILD_REQUIREMENTS = ("setuptools", "wheel")


def read_requirements(path: Path) -> list[str]:
    """The requirement lines of a requirements.txt (comments, blanks and options dropped)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            out.append(line)
    return out


def source_requirements(vendor: Path | None) -> list[str]:
    """MindSpeed's and MindSpeed-LLM's requirements: the vendored files, else the lists above."""
    reqs: list[str] = []
    for name, builtin in (("MindSpeed", MINDSPEED_2_0_0_CORE_R0_8_0), ("MindSpeed-LLM", MINDSPEED_LLM_2_0_0)):
        file = vendor / name / "requirements.txt" if vendor is not None else None
        reqs += read_requirements(file) if file is not None and file.is_file() else list(builtin)
    return [*reqs, *BUILD_REQUIREMENTS]
