"""Console entry point of niffler-png (not implemented yet: issue 5)."""

from niffler.common.cli import not_implemented_command

main = not_implemented_command("niffler-png", 5)
