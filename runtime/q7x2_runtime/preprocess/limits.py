"""Bounds shared by the preprocess flags' check and the confirming process's start."""

MAX_WORKERS = 512  # beyond this --workers is a typo, and would cost real resources
