"""Utilities used across vizoo: checkpoint reading and complexity counting."""
