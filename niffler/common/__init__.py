"""The shared layer used by every Niffler module; no module-specific logic here."""
