"""Analyses on a cube Dataset: selections' statistics, indices, baselines, evaluation, quicklooks."""
