"""The package version: a leaf that imports nothing, so any layer may read it (card, HTTP user agent)."""

__version__ = "0.1.0"
