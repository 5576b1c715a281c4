"""Training: the one stage loop (``loop.py``), the stages (pretraining, Part fViT, fine-tuning), checkpoints."""
