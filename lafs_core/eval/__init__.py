"""Evaluation: embeddings, 10-fold verification, TAR@FAR, IJB templates, plots, registry."""
