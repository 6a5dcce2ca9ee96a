"""An example third-party energybench plugin package (registered by entry points only)."""
