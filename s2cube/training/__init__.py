"""Training batches: plans resolved into stacked frames by the chunk reader (no torch here)."""
