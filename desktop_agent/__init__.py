"""desktop-agent: a restic-compatible backup agent with a tray app and a /ws endpoint."""

__all__ = ["__version__"]

__version__ = "0.1.0"
