"""Models: landmark CNN, landmark patch sampler, Part fViT, heads, margins, checkpoints."""
