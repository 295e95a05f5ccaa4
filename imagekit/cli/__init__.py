"""The command line: it parses arguments and calls the public API (``imagekit.Store``) only."""

from imagekit.cli.app import app, main

__all__ = ["app", "main"]
