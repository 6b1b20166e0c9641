"""Console entry point of niffler-scanner-util (not implemented yet: issue 6)."""

from niffler.common.cli import not_implemented_command

main = not_implemented_command("niffler-scanner-util", 6)
