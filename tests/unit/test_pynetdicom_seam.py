"""The house rule for pynetdicom: its internals are imported by the accelerator module alone.

Everywhere else Niffler imports pynetdicom's public names (the package's own
``__all__`` and its ``sop_class`` module); imports under ``if TYPE_CHECKING``
are for annotations and never run, so a renamed internal can not break them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pynetdicom

import niffler

ACCELERATOR = "_pynetdicom30.py"
PUBLIC_MODULES = {"pynetdicom", "pynetdicom.sop_class"}


def _runtime_imports(tree: ast.Module) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import that runs: not under ``if TYPE_CHECKING``."""
    found: list[tuple[int, str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_only_the_accelerator_imports_pynetdicom_internals() -> None:
    root = Path(niffler.__file__).parent
    offences = []
    checked = 0
    for path in sorted(root.rglob("*.py")):
        if path.name == ACCELERATOR:
            continue
        for line, module, names in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if module != "pynetdicom" and not module.startswith("pynetdicom."):
                continue
            checked += 1
            where = f"{path.relative_to(root)}:{line}"
            if module not in PUBLIC_MODULES:
                offences.append(f"{where} imports {module}")
            elif module == "pynetdicom":
                offences += [f"{where} imports pynetdicom.{n}" for n in names if n not in pynetdicom.__all__]
    assert checked >= 6  # the network package does import pynetdicom: the walk saw it
    assert offences == []


def test_the_check_sees_an_internal_import_and_skips_type_checking_blocks() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "from pynetdicom.dul import DULServiceProvider\n"
        "if TYPE_CHECKING:\n    from pynetdicom.association import Association\n"
        "def f():\n    import pynetdicom._globals\n"
    )
    modules = [module for _, module, _ in _runtime_imports(tree)]
    assert modules == ["typing", "pynetdicom.dul", "pynetdicom._globals"]


def _all_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of every import, those under ``if TYPE_CHECKING`` included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


def test_annotations_name_pynetdicom_classes_through_the_seam_and_it_never_loads_elsewhere() -> None:
    """Not even a type-checking import reaches into pynetdicom outside the accelerator; the
    accelerator itself is loaded at run time by accel.py alone (importlib, inside its guard)."""
    root = Path(niffler.__file__).parent
    offences = []
    for path in sorted(root.rglob("*.py")):
        if path.name == ACCELERATOR:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(root)
        for line, module in _all_imports(tree):
            if module.startswith("pynetdicom.") and module not in PUBLIC_MODULES:
                offences.append(f"{where}:{line} imports {module}")
        for line, module, _ in _runtime_imports(tree):
            if module == "niffler.net._pynetdicom30":
                offences.append(f"{where}:{line} loads the accelerator at run time")
    assert offences == []
