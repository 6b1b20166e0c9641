"""open_store against a real MongoDB-wire server, and the embedded default."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from niffler.common.errors import ConfigError, StoreUnavailable
from niffler.common.store import open_store
from niffler.testing.peers import SecantusServer, free_port


def test_uri_store_round_trips_upserts_and_aggregations(secantus: SecantusServer, mongo_db_name: str) -> None:
    with open_store(secantus.uri, database=mongo_db_name) as store:
        coll = store.db["featureset"]
        for n in (1, 2, 2):
            coll.update_one(
                {"_id": f"series{n}"}, {"$inc": {"count": 1}, "$set": {"Modality": "CT"}}, upsert=True
            )
        assert coll.count_documents({}) == 2
        result = list(coll.aggregate([{"$group": {"_id": "$Modality", "n": {"$sum": "$count"}}}]))
        assert result == [{"_id": "CT", "n": 3}]


def test_unreachable_store_is_a_clear_error_without_password(tmp_path: Path) -> None:
    uri = f"mongodb://niffler:s3cret@127.0.0.1:{free_port()}/"
    with pytest.raises(StoreUnavailable) as info:
        open_store(uri, timeout_ms=300)
    assert "unreachable" in str(info.value) and "s3cret" not in str(info.value)


def test_store_that_dies_and_returns_keeps_its_data(tmp_path: Path, mongo_db_name: str) -> None:
    server = SecantusServer(tmp_path / "db").start()
    port = server.port
    try:
        with open_store(server.uri, database=mongo_db_name) as store:
            store.db.c.insert_one({"_id": 1})
        server.kill()
        with pytest.raises(StoreUnavailable):
            open_store(f"mongodb://127.0.0.1:{port}/", timeout_ms=300)
        server = SecantusServer(tmp_path / "db", port=port).start()
        with open_store(server.uri, database=mongo_db_name) as store:
            assert store.db.c.find_one({"_id": 1}) == {"_id": 1}
    finally:
        server.stop()


def test_bad_uri_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="must start with mongodb://"):
        open_store("http://127.0.0.1:27017")


def test_embedded_store_is_shared_with_a_second_process_and_survives_restart(tmp_path: Path) -> None:
    data = tmp_path / "store"
    store = open_store(None, data_dir=data)
    try:
        assert store.embedded and store.uri.startswith("mongodb://127.0.0.1:")
        store.db.featureset.insert_one({"_id": "s1", "Modality": "MR"})
        reader = textwrap.dedent(
            f"""
            from niffler.common.store import open_store
            with open_store(None, data_dir={str(data)!r}) as s:
                print(s.db.featureset.find_one({{"_id": "s1"}})["Modality"], s._server is None)
            """
        )
        out = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["MR", "True"], out.stderr
    finally:
        store.close()
    assert not (data / "niffler-store.json").exists()
    with open_store(None, data_dir=data) as again:
        assert again.db.featureset.find_one({"_id": "s1"}) == {"_id": "s1", "Modality": "MR"}
