"""niffler-meta."""
