"""Reproducible experiments built on the lafs stages (run from the repository root)."""
