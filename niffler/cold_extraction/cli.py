"""Console entry point of niffler-cold (not implemented yet: issue 7)."""

from niffler.common.cli import not_implemented_command

main = not_implemented_command("niffler-cold", 7)
