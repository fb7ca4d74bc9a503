"""A tiny, deterministic Qwen2.5 checkpoint and alpaca-shaped dataset for trying the flow on CPU."""

from q7x2_runtime.sample.make import make_sample

__all__ = ["make_sample"]
