"""Data on the torch side: the input transform, shard loaders, views and batched augmentation."""
