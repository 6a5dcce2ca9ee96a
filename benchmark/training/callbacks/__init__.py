"""The training loop's built-in callbacks: energy trace, CO monitor, checkpoint files, progress, TensorBoard."""
