"""Datasets as in-memory tensors, read from their standard file layouts."""
