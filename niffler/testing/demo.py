"""Quick-start demo: a local PACS, synthetic studies, retrieval into Niffler's Storage SCP.

Runs entirely on 127.0.0.1 with generated (not real) patients: starts a real
Orthanc seeded with a synthetic corpus, starts Niffler's Storage SCP and asks
Orthanc to C-MOVE every study to it, then prints where the files landed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from niffler.common.dicomnet import StorageSCP
from niffler.testing.corpus import CorpusSpec, generate_corpus
from niffler.testing.peers import OrthancPACS, free_port

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Run the demo in *workdir* and return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workdir", type=Path, nargs="?", default=Path("demo"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    work: Path = args.workdir.absolute()
    shutil.rmtree(work, ignore_errors=True)
    corpus = generate_corpus(work / "synthetic-corpus", CorpusSpec(patients=3, studies_per_patient=2))
    port = free_port()
    received = work / "received"
    with (
        StorageSCP(received, ae_title="NIFFLER", host="127.0.0.1", port=port) as scp,
        OrthancPACS(work / "pacs", modalities={"niffler": ("NIFFLER", "127.0.0.1", port)}) as pacs,
    ):
        pacs.upload([i.path for i in corpus])
        log.info("local PACS (Orthanc) on 127.0.0.1:%d holds %d instances", pacs.dicom_port, len(corpus))
        for study in sorted({i.study_uid for i in corpus}):
            pacs.movescu_study(study, calling_aet="NIFFLER", destination_aet=scp.ae_title)
    stored = sorted(received.rglob("*.dcm"))
    print(f"retrieved {len(stored)} of {len(corpus)} instances into {received}")
    for path in stored[:3]:
        print("  ", path.relative_to(received))
    return 0 if len(stored) == len(corpus) else 1


if __name__ == "__main__":
    sys.exit(main())
