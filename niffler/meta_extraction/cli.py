"""Console entry point of niffler-meta (not implemented yet: issue 4)."""

from niffler.common.cli import not_implemented_command

main = not_implemented_command("niffler-meta", 4)
