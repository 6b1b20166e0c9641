"""Store URI resolution and messages that need no server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from niffler.common.errors import ConfigError, EmbeddedStoreMissing
from niffler.common.store import mask_uri, open_store, resolve_uri


def test_config_uri_wins_over_environment() -> None:
    env = {"NIFFLER_MONGO_URI": "mongodb://a/", "MONGO_URI": "mongodb://b/"}
    assert resolve_uri("mongodb://c/", env) == "mongodb://c/"
    assert resolve_uri(None, env) == "mongodb://a/"
    assert resolve_uri("", {"MONGO_URI": "mongodb://b/"}) == "mongodb://b/"
    assert resolve_uri(None, {}) is None


def test_passwords_are_masked() -> None:
    assert mask_uri("mongodb://user:pw@host:1/db") == "mongodb://user:****@host:1/db"
    assert mask_uri("mongodb://host:1/") == "mongodb://host:1/"


def test_missing_embedded_extra_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "secantus", None)
    with pytest.raises(EmbeddedStoreMissing, match=r"pip install 'niffler\[embedded\]'"):
        open_store(None, data_dir=tmp_path)


def test_no_uri_and_no_folder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no MongoURI"):
        open_store(None)
