"""Quick-start demo: a local PACS streams synthetic studies into niffler-meta, PHI-free metadata out.

Runs entirely on 127.0.0.1 with generated (not real) patients: starts a real
Orthanc seeded with a synthetic corpus and niffler-meta (its Storage SCP,
extraction worker and the embedded MongoDB-wire store), asks Orthanc to
C-MOVE every study to it, waits for the metadata, then prints what the
store holds.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from niffler.meta_extraction.service import open_service
from niffler.testing.corpus import CorpusSpec, Scanner, generate_corpus
from niffler.testing.peers import OrthancPACS, free_port
from niffler.testing.receiver import loopback_meta_config

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
    scanners = (Scanner(), Scanner(serial="SN0002", station="MR01", modality="MR", model="Magnet 3T"))
    corpus = generate_corpus(work / "synthetic-corpus", CorpusSpec(patients=3, scanners=scanners))
    port = free_port()
    config = loopback_meta_config(work / "received", work / "state", port=port)
    service = open_service(config).start()
    try:
        with OrthancPACS(work / "pacs", modalities={"niffler": ("NIFFLER", "127.0.0.1", port)}) as pacs:
            pacs.upload([i.path for i in corpus])
            log.info("local PACS (Orthanc) on 127.0.0.1:%d holds %d instances", pacs.dicom_port, len(corpus))
            for study in sorted({i.study_uid for i in corpus}):
                pacs.movescu_study(study, calling_aet="NIFFLER", destination_aet="NIFFLER")
        service.wait_idle(60)
        db = service.store.db
        series = len({i.series_uid for i in corpus})
        documents = db["featureset"].count_documents({})
        print(f"\nreceived {service.received} instances; {documents} of {series} series documented in "
              f"{db.name}.featureset (embedded store under {config.StateFolder / 'store'})")  # fmt: skip
        sample = db["featureset"].find_one({}, {"_id": 0})
        print("one document (PatientID and UIDs are keyed pseudonyms; names and birth dates are gone):")
        print(json.dumps(sample, indent=2, default=str))
        return 0 if documents == series else 1
    finally:
        service.stop()


if __name__ == "__main__":
    sys.exit(main())
