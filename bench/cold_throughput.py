"""niffler-cold rows/s against the upstream-style baseline (a findscu + a movescu process per row).

A local Orthanc is seeded with N small studies (one series of K 64x64
images each). Both retrieve every study from an N-row PatientID +
AccessionNumber CSV, alternating, several times, in the same run:

- ``niffler-cold`` (a subprocess, as a user runs it): C-FIND then C-MOVE
  per row to its own Storage SCP, associations reused, MaxNifflerProcesses
  workers (1, 2 and 4 by default);
- the baseline, as upstream worked: for each row, one DCMTK ``findscu``
  process to resolve the study, then one ``movescu`` process to move it
  to a DCMTK ``storescp``. ``TCP_NODELAY=1`` for the DCMTK tools, or
  Nagle's algorithm would make each move take seconds and flatter us.

Prints the median rows/s and instances/s of each, the ratio (goal >= 3x),
and checks that both retrieved the same SOP instances.

    .venv/bin/python bench/cold_throughput.py --studies 200 --images 10 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from niffler.testing.corpus import CorpusSpec, generate_corpus
from niffler.testing.peers import DcmtkStoreSCP, OrthancPACS, free_port, run_dcmtk

LOOPBACK = "127.0.0.1"
GOAL = 3.0
_STUDY_UID = re.compile(r"\(0020,000d\) UI \[([0-9.]+)\]")


def baseline(orthanc: OrthancPACS, rows: list[tuple[str, str]], out: Path, port: int) -> float:
    """Upstream's way: a findscu and a movescu process per row; return the seconds."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    with DcmtkStoreSCP(out, aet="BASELINE", port=port):
        for patient, accession in rows:
            found = run_dcmtk(["findscu", "-v", "-aet", "BASELINE", "-aec", orthanc.aet, "-S",
                               "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient}",
                               "-k", f"AccessionNumber={accession}", "-k", "StudyInstanceUID",
                               LOOPBACK, str(orthanc.dicom_port)])  # fmt: skip
            for uid in _STUDY_UID.findall(found.stderr + found.stdout):
                run_dcmtk(["movescu", "-aet", "BASELINE", "-aec", orthanc.aet, "-aem", "BASELINE", "-S",
                           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
                           LOOPBACK, str(orthanc.dicom_port)])  # fmt: skip
    return time.perf_counter() - start


def niffler(config: Path, table: Path, storage: Path) -> float:
    shutil.rmtree(storage, ignore_errors=True)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "niffler.cold_extraction", "--config", str(config), "--csv", str(table)]
    cmd.append("-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"niffler-cold failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def sop_uids(folder: Path) -> set[str]:
    """SOPInstanceUIDs from file names: ours end in <uid>.dcm, storescp's are <modality>.<uid>."""
    names = (p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {n.removesuffix(".dcm").removeprefix("CT.") for n in names if n.endswith(".dcm") or n[:3] == "CT."}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--images", type=int, default=10, help="instances per study")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="niffler-cold-bench-"))
    spec = CorpusSpec(patients=args.studies, studies_per_patient=1, series_per_study=1,
                      instances_per_series=args.images, rows=64, columns=64)  # fmt: skip
    corpus = generate_corpus(work / "corpus", spec)
    rows = sorted({(i.patient_id, i.accession) for i in corpus})
    table = work / "rows.csv"
    table.write_text("PatientID,AccessionNumber\n" + "".join(f"{p},{a}\n" for p, a in rows))
    ours_port, base_port = free_port(), free_port()
    modalities = {"niffler": ("NIFFLER", LOOPBACK, ours_port), "baseline": ("BASELINE", LOOPBACK, base_port)}
    with OrthancPACS(work / "orthanc", modalities=modalities) as orthanc:
        orthanc.upload([i.path for i in corpus])
        print(f"PACS: {len(rows)} studies, {len(corpus)} instances")
        configs = {}
        for workers in args.workers:
            configs[workers] = work / f"cold-{workers}.json"
            configs[workers].write_text(json.dumps({
                "SrcAet": f"{orthanc.aet}@{LOOPBACK}:{orthanc.dicom_port}",
                "QueryAet": f"NIFFLER:{ours_port}",
                "StorageFolder": str(work / "out-niffler"),
                "MaxNifflerProcesses": workers,
            }))  # fmt: skip
        times: dict[str, list[float]] = {"baseline findscu+movescu": []}
        times |= {f"niffler-cold x{w}": [] for w in args.workers}
        want = {i.sop_uid for i in corpus}
        for repeat in range(args.repeats):
            seconds = baseline(orthanc, rows, work / "out-baseline", base_port)
            times["baseline findscu+movescu"].append(seconds)
            assert sop_uids(work / "out-baseline") == want, "the baseline missed instances"
            line = [f"baseline {times['baseline findscu+movescu'][-1]:.2f} s"]
            for workers, config in configs.items():
                times[f"niffler-cold x{workers}"].append(niffler(config, table, work / "out-niffler"))
                assert sop_uids(work / "out-niffler") == want, "niffler-cold missed instances"
                line.append(f"x{workers} {times[f'niffler-cold x{workers}'][-1]:.2f} s")
            print(f"  run {repeat + 1}: " + ", ".join(line))
    print(f"\n{'retriever':26s} {'median s':>9s} {'rows/s':>8s} {'inst/s':>8s}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, med in medians.items():
        print(f"{name:26s} {med:9.2f} {len(rows) / med:8.1f} {len(corpus) / med:8.0f}")
    base = medians["baseline findscu+movescu"]
    for workers in args.workers:
        ratio = base / medians[f"niffler-cold x{workers}"]
        print(f"ratio niffler-cold x{workers} / baseline rows/s: {ratio:.2f}x (goal >= {GOAL:.0f}x)")
    print("both retrieved the same SOP instances: yes")


if __name__ == "__main__":
    main()
