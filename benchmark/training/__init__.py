"""Training: the run loop, its fast path, progress and the catastrophic-overfitting monitor."""
