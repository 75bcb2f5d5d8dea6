"""Bytewax operators: the only place where records meet models."""
