"""Built-in sampler plugins: one file each."""
