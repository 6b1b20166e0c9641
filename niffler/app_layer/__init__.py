"""niffler-scanner-util."""
