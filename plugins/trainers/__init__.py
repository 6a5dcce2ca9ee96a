"""Built-in trainer plugins: one file each."""
