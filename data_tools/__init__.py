"""data_tools: readers of users' face data formats, alignment, few-shot subsets and WebDataset shards."""
