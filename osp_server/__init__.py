"""osp-server: an OSP clearinghouse and routing policy server on Twisted."""

__version__ = "0.1.0"
"""The one place the version is written (pyproject reads it from here)."""
