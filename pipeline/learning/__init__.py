"""Learning on cached features: losses, batches, the training loop, batched inference."""
