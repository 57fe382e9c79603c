"""Training: loss, the training engine, sparsity training, evaluation (P, R, mAP@0.5), checkpoints, DDP."""
