"""edgewatch dataflows: one module per use case, each exposing a module-level ``flow``."""
