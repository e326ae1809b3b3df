"""The package version, in one place (``setup.py`` reads this file; modules import it)."""

__version__ = "0.1.0"
