"""`q7x2-runtime pretrain`: launch one node's share of a pretraining job.

Two engines: MindSpeed-LLM's pretrain_gpt.py on Ascend NPUs, and a CPU trainer (torch, gloo
DDP) that trains the same Qwen2.5 architecture from the same checkpoint and dataset formats
and prints the same log lines, so everything downstream works unchanged on either.
"""
