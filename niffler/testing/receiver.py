"""niffler-meta set up for loopback runs (quick start, benchmarks, tests) with the shipped featuresets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from niffler.meta_extraction.config import MetaConfig
from niffler.testing.peers import LOOPBACK, free_port

__all__ = ["FEATURESETS", "loopback_meta_config"]

#: The featureset files shipped in the repository (configs/featuresets/).
FEATURESETS = Path(__file__).resolve().parents[2] / "configs" / "featuresets"


def loopback_meta_config(storage: Path, state: Path, *, port: int | None = None, **keys: Any) -> MetaConfig:
    """Return a receiver config listening as NIFFLER on 127.0.0.1 (a free port unless given)."""
    return MetaConfig(
        QueryAet=f"NIFFLER:{port or free_port()}",
        BindAddress=LOOPBACK,
        StorageFolder=storage,
        StateFolder=state,
        FeaturesetFolder=FEATURESETS,
        **keys,
    )
