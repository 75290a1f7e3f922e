"""restic-format backup engine (synchronous)."""
