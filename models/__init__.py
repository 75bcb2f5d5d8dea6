"""Detectors as plain numpy objects with no Bytewax in them."""
