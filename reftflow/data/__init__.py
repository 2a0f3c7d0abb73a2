"""Data: the one record shape, the built-in synthetic task, loaders for real formats."""
