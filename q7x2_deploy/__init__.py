"""q7x2-deploy: pretrain Qwen2.5 with MindSpeed-LLM on a cluster of Ascend NPU hosts."""

__version__ = "0.1.0"
