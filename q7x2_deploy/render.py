"""Render the files in templates/ (Dockerfiles, per-host run scripts) with jinja2.

StrictUndefined: a missing value is a bug in the caller, never an empty string in a
Dockerfile.
"""

from __future__ import annotations

from dataclasses import dataclass


from q7x2_deploy import __version__
from q7x2_deploy.plan import HostPlan, Plan, shell_line
from q7x2_deploy.resources import template_env
from q7x2_runtime.doctor.pins import Pin, Pins

_ENV = template_env()


@dataclass(frozen=True)
class AscendStack:
    """The Ascend software stack of MindSpeed-LLM 2.0.0 (torch, torch_npu, apex, MindSpeed,
    Megatron-LM), pinned together: the versions are only known to work as a set."""

    torch_version: str = "2.1.0"
    torch_npu_version: str = "2.1.0.post12"
    apex_requirement: str = "apex"
    mindspeed_ref: str = "2.0.0_core_r0.8.0"
    mindspeed_llm_ref: str = "2.0.0"
    megatron_ref: str = "core_r0.8.0"
    # What those refs install as: MindSpeed's setup.py at 2.0.0_core_r0.8.0 says 0.8.0;
    # Megatron's megatron/core/package_info.py at core_r0.8.0 says 0.8.0; MindSpeed-LLM 2.0.0's
    # requirements.txt pins transformers 4.43.2.
    mindspeed_version: str = "0.8.0"
    megatron_core_version: str = "0.8.0"
    transformers_version: str = "4.43.2"


CPU_TORCH_VERSION = "2.13.0"
# Where the ascend Dockerfile puts the sources (doctor reads their versions there).
ASCEND_SOURCE_DIRS = {"MindSpeed": "/opt/MindSpeed", "MindSpeed-LLM": "/opt/MindSpeed-LLM"}
# The cpu image pins torch; these it takes as pip resolves them, recorded when it is built.
CPU_RECORDED_DISTS = ("transformers", "tokenizers", "safetensors", "numpy", "tensorboard")
# The project's own wheel as `pip wheel` names it (build contexts keep it in wheels/project/).
PROJECT_WHEEL = f"q7x2_deploy-{__version__}-py3-none-any.whl"


def render_dockerfile(
    flavor: str,
    *,
    base_image: str,
    vendor: bool = True,
    source_repos: dict[str, str] | None = None,
    stack: AscendStack = AscendStack(),
) -> str:
    """The Dockerfile of a flavor. For ascend, sources come from vendor/ in the build context
    unless `vendor` is false, then they are cloned from `source_repos` (mindspeed, mindspeed_llm,
    megatron: the URLs of the operator's source mirrors)."""
    if flavor == "cpu":
        return _ENV.get_template("Dockerfile.cpu.j2").render(
            base_image=base_image, torch_version=CPU_TORCH_VERSION, project_wheel=PROJECT_WHEEL
        )
    if flavor != "ascend":
        raise ValueError(f"unknown flavor {flavor!r}")
    repos = source_repos or {}
    if not vendor:
        missing = [k for k in ("mindspeed", "mindspeed_llm", "megatron") if k not in repos]
        if missing:
            raise ValueError(f"cloning sources needs repository URLs for {', '.join(missing)}")
    return _ENV.get_template("Dockerfile.ascend.j2").render(
        base_image=base_image,
        vendor=vendor,
        mindspeed_repo=repos.get("mindspeed", ""),
        mindspeed_llm_repo=repos.get("mindspeed_llm", ""),
        megatron_repo=repos.get("megatron", ""),
        project_wheel=PROJECT_WHEEL,
        **stack.__dict__,
    )


def image_pins(flavor: str, *, python_version: str | None = None, stack: AscendStack = AscendStack()) -> Pins:
    """What the image of `flavor` is built to hold: the Dockerfile installs these same values,
    copies this file to /usr/local/share/q7x2/pins.json, and `doctor --record` fills the open entries
    (CANN, apex, the base image's Python, ...) with what the build installed."""
    def python() -> Pin:
        return Pin("Python", "python", python_version, record=python_version is None)

    own = Pin("q7x2-deploy", "dist", __version__, dist="q7x2-deploy")
    if flavor == "cpu":
        return Pins("cpu", [python(), Pin("torch", "dist", CPU_TORCH_VERSION, dist="torch"),
                            *(Pin(d, "dist", None, dist=d, record=True) for d in CPU_RECORDED_DISTS), own])
    if flavor != "ascend":
        raise ValueError(f"unknown flavor {flavor!r}")
    return Pins("ascend", [
        python(),
        Pin("CANN", "cann", None, record=True),
        Pin("torch", "dist", stack.torch_version, dist="torch"),
        Pin("torch_npu", "dist", stack.torch_npu_version, dist="torch_npu"),
        Pin("apex", "dist", None, dist="apex", record=True),
        Pin("MindSpeed", "dist", stack.mindspeed_version, dist="mindspeed"),
        Pin("MindSpeed sources", "source", stack.mindspeed_ref, path=ASCEND_SOURCE_DIRS["MindSpeed"]),
        Pin("MindSpeed-LLM", "source", stack.mindspeed_llm_ref, path=ASCEND_SOURCE_DIRS["MindSpeed-LLM"]),
        Pin("Megatron core", "megatron", stack.megatron_core_version,
            path=f"{ASCEND_SOURCE_DIRS['MindSpeed-LLM']}/megatron"),
        Pin("transformers", "dist", stack.transformers_version, dist="transformers"),
        own,
    ])


def render_host_script(plan: Plan, host: HostPlan) -> str:
    """A shell script that does by hand what `up` does on one host (for reading and audits)."""
    return _ENV.get_template("host-run.sh.j2").render(
        plan=plan,
        host=host,
        steps=[(s, shell_line(s.docker_run)) for s in host.steps],
        job_file_dir=host.job_file.rsplit("/", 1)[0],
        job_file=host.job_file,
        job_spec_json=plan.job_spec.to_json(),
        q=shell_line,
    )
