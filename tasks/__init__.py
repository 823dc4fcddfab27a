"""Task registry (head kind, loss, metrics), multi-task models, loss weighting and the training loop."""
