"""niffler-cold."""
