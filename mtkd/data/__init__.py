"""Training data: the multi-task batch sampler and the collate function."""
