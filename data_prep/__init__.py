"""Dataset preparation tools: ingest, split, mini-bench (may use PyTorch; iab_jax never does)."""
