"""Layers (filled in)."""
