"""Sample plans: the reference loader's sampling rules and plan tables by label (no I/O)."""
