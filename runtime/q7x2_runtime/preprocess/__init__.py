"""`q7x2-runtime preprocess`: raw text datasets -> Megatron indexed datasets (.bin/.idx)."""
