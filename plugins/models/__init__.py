"""Built-in model plugins: one file each."""
