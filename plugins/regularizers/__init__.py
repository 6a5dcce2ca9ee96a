"""Built-in regularizer plugins: one file each."""
