"""Resolve a recipe's version (``41``, ``latest``) into one concrete file, one module per format."""
