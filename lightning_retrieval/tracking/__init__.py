"""Experiment tracking helpers (Weights & Biases)."""
