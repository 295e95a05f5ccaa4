"""The one place the version is written; pyproject.toml and the User-Agent read it from here."""

__version__ = "0.1.0"
