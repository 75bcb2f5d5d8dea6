"""Bytewax output connectors: alerts, dead letters and metrics."""
