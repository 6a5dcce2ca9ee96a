"""Built-in attack plugins: one file each."""
