"""data_tools: readers of users' face data formats (faces, pair sets, IJB), alignment, few-shot subsets and WebDataset
shards; built on lafs_core."""
