"""Datasets that ship with installed packages, written as TFRecords."""
