"""Regenerate docs/configuration.md from the config models: every key, its type, default and description.

    .venv/bin/python scripts/gen_config_reference.py

tests/unit/test_config_reference.py fails when the file is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from niffler.app_layer.config import AppConfig
from niffler.cold_extraction.config import ColdConfig
from niffler.common.config import config_help
from niffler.meta_extraction.config import MetaConfig
from niffler.png_extraction.config import PngConfig

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
MODULES: list[tuple[str, str, type[Any]]] = [
    ("niffler-cold", "configs/cold_extraction.json", ColdConfig),
    ("niffler-meta", "configs/meta_extraction.json", MetaConfig),
    ("niffler-png", "configs/png_extraction.json", PngConfig),
    ("niffler-scanner-util", "configs/app_layer.json", AppConfig),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config models by `scripts/gen_config_reference.py`; do not edit by hand.",
        "Every key has a default; an unknown key or a bad value stops the command with exit code 1,",
        "naming the key and the file. CLI flags override the file.",
        "",
    ]
    for command, path, model in MODULES:
        lines += [f"## {command} (`{path}`)", "", "| key | type | default | description |"]
        lines.append("|---|---|---|---|")
        for key, type_name, default, doc in config_help(model):
            shown = json.dumps(str(default) if isinstance(default, Path) else default)
            lines.append(f"| `{key}` | {_cell(type_name)} | `{_cell(shown)}` | {_cell(doc)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
