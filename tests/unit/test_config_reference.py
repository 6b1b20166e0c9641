"""docs/configuration.md is exactly what the config models say: a key added without it fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_reference_is_up_to_date() -> None:
    script = ROOT / "scripts" / "gen_config_reference.py"
    spec = importlib.util.spec_from_file_location("gen_config_reference", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render()
    actual = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/configuration.md is stale: run scripts/gen_config_reference.py"
    for key in ("SrcAet", "TransferSyntaxPolicy", "DICOMHome", "SkewThresholdHours", "BindAddress"):
        assert f"`{key}`" in actual
