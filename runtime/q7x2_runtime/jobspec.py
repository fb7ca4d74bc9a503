"""The job spec: one typed description of a pretraining job, shared by the deployer and the runtime.

The deployer reads it from the inventory's `job:` section, resolves the model dimensions and
writes it as JSON next to each container; the runtime reads that JSON back. Conversion,
preprocessing and training all take tp/pp/num_layer_list from here, so they cannot disagree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from q7x2_runtime.model_dims import MAX_LAYERS, ModelDims, dims_from_hf_config, preset_dims
from q7x2_runtime.safe_text import PATH_MAX, check_env_name, check_env_sizes, check_safe_path, check_safe_value, non_printing, show

Engine = Literal["mindspeed", "q7x2"]
# Environment entries for containers: plain names, values without non-printing characters,
# each checked under its own key so a violation names it.
EnvMap = Annotated[
    dict[Annotated[str, AfterValidator(check_env_name)], Annotated[str, AfterValidator(check_safe_value)]],
    Field(max_length=256),
    AfterValidator(check_env_sizes),
]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in the inventory must never pass silently.

    Strict types: `true` is not the integer 1, "4" is not 4, 4.0 is not a count; and no
    infinities or NaNs. Every number also has a plausible range, checked before any
    arithmetic is done on it.
    """

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True, strict=True, allow_inf_nan=False)


# Counts of iterations, steps or samples: a billion is more than any real run.
Count = Annotated[int, Field(ge=1, le=10**9)]
# Column names of the raw dataset: they become part of output file names
# (<prefix>_<key>_document.bin) and preprocess arguments, so no option or path syntax.
_JSON_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


def _json_key(v: str) -> str:
    if not _JSON_KEY.fullmatch(v):
        raise ValueError(f"{show(v)} is not a dataset column name: letters, digits, _ and -, not starting with -, at most 64")
    return v


def _unique(v: list[str]) -> list[str]:
    dupes = sorted({k for k in v if v.count(k) > 1})
    if dupes:
        raise ValueError(f"lists {', '.join(dupes)} more than once")
    return v


def _hf_config_path(v: str) -> str:
    if not v or non_printing(v) or len(v) >= PATH_MAX:
        raise ValueError(f"{show(v)} is not a usable local path (empty, non-printing characters or longer than {PATH_MAX - 1})")
    return v


class ModelSpec(StrictModel):
    """Which model: a preset, an HF config.json to read, or explicit dims.

    Resolution order: explicit `dims`, then `preset`, then `hf_config`. After validation `dims`
    is always set, so the JSON handed to the runtime is self-contained.
    """

    preset: Literal["qwen2.5-7b"] | None = None
    hf_config: Annotated[str, AfterValidator(_hf_config_path)] | None = Field(default=None, description="local path of an HF config.json")
    dims: ModelDims | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, data: object, info: ValidationInfo) -> object:
        # In an inventory exactly one source may be given (else one would silently win); the
        # resolved spec the deployer writes carries dims beside the source they came from.
        if isinstance(data, dict) and (info.context or {}).get("inventory"):
            given = [k for k in ("preset", "hf_config", "dims") if data.get(k) is not None]
            if len(given) > 1:
                raise ValueError(f"gives {' and '.join(given)}: give exactly one model source")
        return data

    @model_validator(mode="after")
    def _resolve(self) -> "ModelSpec":
        if self.dims is not None:
            return self
        if self.preset is not None:
            object.__setattr__(self, "dims", preset_dims(self.preset))
        elif self.hf_config is not None:
            object.__setattr__(self, "dims", dims_from_hf_config(Path(self.hf_config).expanduser()))
        else:
            object.__setattr__(self, "dims", preset_dims("qwen2.5-7b"))
        return self

    @property
    def d(self) -> ModelDims:
        assert self.dims is not None
        return self.dims


class Parallelism(StrictModel):
    tp: int = Field(default=1, ge=1, le=64)
    pp: int = Field(default=1, ge=1, le=256)
    num_layer_list: Annotated[list[Annotated[int, Field(ge=1, le=MAX_LAYERS)]], Field(min_length=1, max_length=256)] | None = None
    npus_per_node: int = Field(default=8, ge=1, le=64)


class Training(StrictModel):
    seq_length: int = Field(default=4096, ge=8, le=1_048_576)
    micro_batch_size: int = Field(default=1, ge=1, le=65536)
    global_batch_size: int = Field(default=64, ge=1, le=1 << 24)
    train_iters: Count = 2000
    lr: float = Field(default=1.25e-6, gt=0, le=1)
    min_lr: float = Field(default=1.25e-7, ge=0, le=1)
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    lr_warmup_fraction: float = Field(default=0.01, ge=0, le=1)
    weight_decay: float = Field(default=0.1, ge=0, le=1)
    clip_grad: float = Field(default=1.0, ge=0, le=1e6)
    adam_beta1: float = Field(default=0.9, gt=0, lt=1)
    adam_beta2: float = Field(default=0.95, gt=0, lt=1)
    init_method_std: float = Field(default=0.01, gt=0, le=1)
    # Megatron seeds numpy with it, which takes 0 .. 2**32 - 1.
    seed: int = Field(default=1234, ge=0, le=2**32 - 1)
    save_interval: Count = 2000
    log_interval: Count = 1
    params_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"


class Paths(StrictModel):
    """Absolute paths, the same on the host and inside the container (volumes mount them 1:1)."""

    hf_weights: str = "/apps/models/Qwen2.5-7B"
    mcore_weights: str = "/apps/models/Qwen2.5-7B-mcore"
    raw_dataset: str = "/apps/datasets/alpaca/train-00000-of-00001-a09b74b3ef9c3b56.parquet"
    dataset_prefix: str = "/apps/datasets/alpaca/alpaca"
    tokenizer: str | None = None  # defaults to hf_weights
    save_dir: str = "/apps/ckpt/qwen25-7b"
    logs: str = "/apps/logs"
    # Per-node storage: where each host copies every new checkpoint iteration so it survives the
    # loss of the host that wrote it (a path every host mounts, or None: the next host's copy).
    replica: str | None = None

    @field_validator("*")
    @classmethod
    def _absolute_and_safe(cls, v: str | None) -> str | None:
        if v is None:
            return v
        check_safe_path(v)
        if not PurePosixPath(v).is_absolute():
            raise ValueError(f"must be an absolute path, got {v!r}")
        return v

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.hf_weights

    @property
    def data_path(self) -> str:
        """What Megatron's --data-path takes: the prefix preprocessing writes, without extension."""
        return f"{self.dataset_prefix}_text_document"

    def all(self) -> dict[str, str]:
        out = {k: v for k, v in self.model_dump().items() if v is not None}
        out["tokenizer"] = self.tokenizer_path
        return out


class Steps(StrictModel):
    convert: bool = True
    preprocess: bool = True
    pretrain: bool = True


class Tools(StrictModel):
    """Which implementation runs each prepare step. Default: by image flavor (see Job.tool)."""

    convert: Engine | None = None
    preprocess: Engine | None = None


class Checkpoint(StrictModel):
    """What a training checkpoint holds. Both default on, so a resume continues exactly."""

    # Optimizer and RNG state (Megatron drops them with --no-save-optim / --no-save-rng).
    keep_optimizer: bool = True
    # --use-distributed-optimizer: MindSpeed-LLM's resume documentation asks for it; the
    # optimizer state is then in distrib_optim.pt beside each rank's model_optim_rng.pt.
    distributed_optimizer: bool = True


class Preprocess(StrictModel):
    workers: int = Field(default=4, ge=1, le=256)
    append_eod: bool = False
    json_keys: Annotated[list[Annotated[str, AfterValidator(_json_key)]], Field(min_length=1, max_length=16), AfterValidator(_unique)] = ["text"]
    log_interval: Count = 1000


class Job(StrictModel):
    name: str = Field(default="qwen25-7b", pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    model: ModelSpec = ModelSpec()
    parallelism: Parallelism = Parallelism()
    training: Training = Training()
    paths: Paths = Paths()
    storage: Literal["shared", "per-node"] = "shared"
    steps: Steps = Steps()
    tools: Tools = Tools()
    preprocess: Preprocess = Preprocess()
    checkpoint: Checkpoint = Checkpoint()
    env: EnvMap = {}

    def layer_list(self) -> list[int]:
        """Layers per pipeline stage: num_layer_list, or an even split."""
        p = self.parallelism
        if p.num_layer_list is not None:
            return list(p.num_layer_list)
        n = self.model.d.num_layers
        return [n // p.pp] * p.pp


class ClusterSpec(StrictModel):
    """What the deployer computed about the whole world; every node gets the same copy."""

    nnodes: int = Field(ge=1, le=1024)
    master_addr: str = Field(min_length=1, max_length=253)
    master_port: int = Field(ge=1, le=65535)
    flavor: Literal["ascend", "cpu"] = "ascend"
    connect_timeout_s: int = Field(default=300, ge=1, le=86400)


class JobSpec(StrictModel):
    """The file the deployer writes for each container (`q7x2-runtime pretrain --job FILE`)."""

    version: Literal[1] = 1
    job: Job
    cluster: ClusterSpec

    @property
    def world_size(self) -> int:
        return self.cluster.nnodes * self.job.parallelism.npus_per_node

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> "JobSpec":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
