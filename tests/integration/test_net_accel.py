"""The accelerator seam: a pynetdicom whose internals moved still receives, through the public API."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pynetdicom
import pytest

from niffler.testing.corpus import CorpusSpec, generate_corpus
from niffler.testing.peers import free_port

#: Runs in a fresh interpreter: *prelude* breaks pynetdicom first, then a Storage SCP receives the
#: corpus from DCMTK storescu, and the script prints the accelerator state and the files stored.
SCRIPT = """
import logging, subprocess, sys
from pathlib import Path
{prelude}
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
from niffler.net import accel
from niffler.net.scp import StorageSCP
port, corpus, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
with StorageSCP(out, ae_title="NIFFLER", port=port, host="127.0.0.1"):
    subprocess.run(["/usr/bin/storescu", "-aec", "NIFFLER", "+sd", "+r", "127.0.0.1", str(port), corpus],
                   check=True, env={{"TCP_NODELAY": "1", "PATH": "/usr/bin"}})
print("ENABLED", accel.ENABLED)
print("STORED", len(list(out.rglob("*.dcm"))))
"""

#: pynetdicom 3.1 renames ``_MSG_TO_PRIMITVE``, which the accelerator imports. Renaming it here
#: would break pynetdicom's own code, so the accelerator's import is made to fail the same way.
RENAMED_INTERNAL = """
import importlib.abc, sys
class _Renamed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "niffler.net._pynetdicom30":
            raise ImportError("cannot import name '_MSG_TO_PRIMITVE' from 'pynetdicom.dimse_messages'")
        return None
sys.meta_path.insert(0, _Renamed())
"""


def _receive(tmp_path: Path, prelude: str, env: dict[str, str] | None = None) -> str:
    corpus = generate_corpus(tmp_path / "corpus", CorpusSpec(patients=1, studies_per_patient=2))
    script = tmp_path / "receive.py"
    script.write_text(textwrap.dedent(SCRIPT.format(prelude=prelude)))
    result = subprocess.run(
        [sys.executable, str(script), str(free_port()), str(tmp_path / "corpus"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        # The switch of the run around this test (CI runs it with the accelerator off) is not this test's.
        env={**{k: v for k, v in os.environ.items() if k != "NIFFLER_NET_ACCEL"}, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    assert f"STORED {len(corpus)}" in result.stdout, result.stdout
    return result.stdout


def test_a_renamed_pynetdicom_internal_turns_the_accelerator_off_not_the_receiver(tmp_path: Path) -> None:
    out = _receive(tmp_path, RENAMED_INTERNAL)
    assert "ENABLED False" in out
    # One INFO line says so when the receiver starts.
    assert "pynetdicom accelerator off: it does not load on pynetdicom" in out
    assert "ImportError" in out


def test_the_switch_turns_the_accelerator_off(tmp_path: Path) -> None:
    out = _receive(tmp_path, "", {"NIFFLER_NET_ACCEL": "0"})
    assert "ENABLED False" in out and "pynetdicom accelerator off ($NIFFLER_NET_ACCEL)" in out


@pytest.mark.skipif(not pynetdicom.__version__.startswith("3.0."), reason="verified on pynetdicom 3.0.x")
def test_the_accelerator_runs_on_the_verified_pynetdicom(tmp_path: Path) -> None:
    out = _receive(tmp_path, "", {"NIFFLER_NET_ACCEL": "1"})
    assert "ENABLED True" in out and "pynetdicom accelerator on" in out
