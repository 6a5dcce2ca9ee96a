"""Storage: the SQLite run store, checkpoint files, trained models and published reference rows."""
