"""Datasets of the detection side."""
