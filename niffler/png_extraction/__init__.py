"""niffler-png."""
