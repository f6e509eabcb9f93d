"""Training: the loop (``trainer``), its callbacks, checkpoints, optimiser and processes."""
