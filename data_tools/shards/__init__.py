"""WebDataset shards with precomputed landmarks: landmark sources, atomic writer, manifest, precompute, verify."""
