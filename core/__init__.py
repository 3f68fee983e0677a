"""The bottom layer: settings, errors and stable hashing. Imports nothing else of the project."""

__version__ = "0.1.0"
