"""niffler-cold rows/s against the upstream-style baseline (a findscu + a movescu process per row).

A local Orthanc is seeded with N small studies (one series of K 64x64
images each). Both retrieve every study from an N-row PatientID +
AccessionNumber CSV, alternating, several times, in the same run:

- ``niffler-cold`` (a subprocess, as a user runs it): C-FIND then C-MOVE
  per row to its own Storage SCP, associations reused, MaxNifflerProcesses
  workers (1, 2 and 4 by default);
- ``niffler-cold`` over DICOMweb (``Transport: dicomweb``) from the same
  Orthanc through Debian's DICOMweb plugin: QIDO-RS then WADO-RS per row,
  the same worker counts;
- the baseline, as upstream worked: for each row, one DCMTK ``findscu``
  process to resolve the study, then one ``movescu`` process to move it
  to a DCMTK ``storescp``. ``TCP_NODELAY=1`` for the DCMTK tools, or
  Nagle's algorithm would make each move take seconds and flatter us.

Prints the median rows/s and instances/s of each, the ratio of the medians
and the median of the per-repeat ratios (goals: >= 3x with 1 worker, >= 4x
at the best worker count), for DICOMweb also its ratio against DIMSE at the
same worker count, and checks that all retrieved the same SOP instances.
A niffler-cold run in which a C-MOVE of several studies failed
(its studies then fetched one by one) is marked, and it and any run over
twice the median of its column are listed at the end with their
niffler-cold log (``-v``, kept in the work folder beside Orthanc's), so a
stall can be told from noise. Every run retrieves into a folder of its own,
deleted only at the end (see benchlib: deleting just before a run slows it).

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

from benchlib import FINDSCU, MOVESCU, RunFolders, load_note, median_ratio, run_tool, storescp

from niffler.testing.corpus import CorpusSpec, generate_corpus
from niffler.testing.peers import OrthancPACS, free_port

LOOPBACK = "127.0.0.1"
GOAL_ONE_WORKER = 3.0
GOAL_BEST = 4.0
BASELINE = "baseline findscu+movescu"
DICOMWEB = "niffler-cold dicomweb"
_STUDY_UID = re.compile(r"\(0020,000d\) UI \[([0-9.]+)\]")
#: What niffler-cold logs when a C-MOVE of several studies failed and they are fetched one by one.
_FALLBACK = "the rest go one by one"


def baseline(orthanc: OrthancPACS, rows: list[tuple[str, str]], out: Path, port: int) -> float:
    """Upstream's way: a findscu and a movescu process per row into *out*; return the seconds."""
    start = time.perf_counter()
    with storescp(out, aet="BASELINE", port=port):
        for patient, accession in rows:
            found = run_tool([FINDSCU, "-v", "-aet", "BASELINE", "-aec", orthanc.aet, "-S",
                              "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient}",
                              "-k", f"AccessionNumber={accession}", "-k", "StudyInstanceUID",
                              LOOPBACK, str(orthanc.dicom_port)])  # fmt: skip
            for uid in _STUDY_UID.findall(found.stderr + found.stdout):
                run_tool([MOVESCU, "-aet", "BASELINE", "-aec", orthanc.aet, "-aem", "BASELINE", "-S",
                          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
                          LOOPBACK, str(orthanc.dicom_port)])  # fmt: skip
    return time.perf_counter() - start


def niffler(config: Path, table: Path, storage: Path, log: Path) -> tuple[float, int]:
    """Run niffler-cold as a user does, into *storage* (its log at -v to *log*).

    Returns (seconds, C-MOVEs of several studies that failed).
    """
    cmd = [sys.executable, "-m", "niffler.cold_extraction", "-v", "--config", str(config)]
    cmd += ["--csv", str(table), "--storage-folder", str(storage)]
    with log.open("w") as handle:
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"niffler-cold failed ({proc.returncode}); see {log}")
    return elapsed, log.read_text(errors="replace").count(_FALLBACK)


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--studies-per-move", type=int, default=None, help="niffler-cold StudiesPerMove (default: 10)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="niffler-cold-bench-"))
    spec = CorpusSpec(patients=args.studies, studies_per_patient=1, series_per_study=1,
                      instances_per_series=args.images, rows=64, columns=64, distinct_uids=True)  # fmt: skip
    corpus = generate_corpus(work / "corpus", spec)
    rows = sorted({(i.patient_id, i.accession) for i in corpus})
    table = work / "rows.csv"
    table.write_text("PatientID,AccessionNumber\n" + "".join(f"{p},{a}\n" for p, a in rows))
    ours_port, base_port = free_port(), free_port()
    modalities = {"niffler": ("NIFFLER", LOOPBACK, ours_port), "baseline": ("BASELINE", LOOPBACK, base_port)}
    with OrthancPACS(work / "orthanc", modalities=modalities, dicomweb=True) as orthanc:
        orthanc.upload([i.path for i in corpus])
        print(f"PACS: {len(rows)} studies, {len(corpus)} instances; {load_note()}; work folder {work}")
        configs = {}
        for workers in args.workers:
            configs[workers] = work / f"cold-{workers}.json"
            configs[workers].write_text(json.dumps({
                "SrcAet": f"{orthanc.aet}@{LOOPBACK}:{orthanc.dicom_port}",
                "QueryAet": f"NIFFLER:{ours_port}",
                "StorageFolder": str(work / "unused"),  # each run gets --storage-folder
                "MaxNifflerProcesses": workers,
                **({"StudiesPerMove": args.studies_per_move} if args.studies_per_move else {}),
            }))  # fmt: skip
            configs[-workers] = work / f"cold-dicomweb-{workers}.json"
            configs[-workers].write_text(json.dumps({
                "Transport": "dicomweb",
                "DicomWebUrl": orthanc.dicomweb_url,
                "StorageFolder": str(work / "unused"),
                "MaxNifflerProcesses": workers,
            }))  # fmt: skip
        times: dict[str, list[float]] = {BASELINE: []}
        times |= {f"niffler-cold x{w}": [] for w in args.workers}
        times |= {f"{DICOMWEB} x{w}": [] for w in args.workers}
        runs: list[tuple[str, int, float, int, Path]] = []  # (column, repeat, s, failed list moves, log)
        want = {i.sop_uid for i in corpus}
        size = sum(i.path.stat().st_size for i in corpus)
        folders = RunFolders(work / "out", args.repeats * (1 + 2 * len(args.workers)), size)
        for repeat in range(args.repeats):
            out = folders.new("baseline")
            seconds = baseline(orthanc, rows, out, base_port)
            times[BASELINE].append(seconds)
            assert sop_uids(out) == want, "the baseline missed instances"
            folders.done(out)
            line = [f"baseline {seconds:.2f} s"]
            for key, config in configs.items():  # DIMSE x1, x2..., then DICOMweb (negative keys)
                workers, web = abs(key), key < 0
                name = f"{DICOMWEB} x{workers}" if web else f"niffler-cold x{workers}"
                tag = f"{'dicomweb-' if web else ''}x{workers}"
                log = work / f"run{repeat + 1}-{tag}.log"
                out = folders.new(tag)
                seconds, failed = niffler(config, table, out, log)
                times[name].append(seconds)
                runs.append((name, repeat + 1, seconds, failed, log))
                assert sop_uids(out) == want, "niffler-cold missed instances"
                folders.done(out)
                note = f" ({failed} list move(s) failed)" if failed else ""
                line.append(f"{tag} {seconds:.2f} s{note}")
            print(f"  run {repeat + 1}: " + ", ".join(line) + f"   ({load_note()})", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    slow = [run for run in runs if run[2] > 2 * medians[run[0]] or run[3]]
    print(f"\n{args.repeats} repeats, {load_note()} at the end")
    print(f"{'retriever':26s} {'median s':>9s} {'rows/s':>8s} {'inst/s':>8s} {'ratio':>6s} {'per-rep':>8s}"
          f" {'vs DIMSE':>9s}")  # fmt: skip
    base = medians[BASELINE]
    for name, med in medians.items():
        per_repeat = median_ratio(times[BASELINE], times[name])
        dimse = name.replace(DICOMWEB, "niffler-cold") if name.startswith(DICOMWEB) else ""
        versus = f"{medians[dimse] / med:8.2f}x" if dimse else ""
        print(f"{name:26s} {med:9.2f} {len(rows) / med:8.1f} {len(corpus) / med:8.0f} "
              f"{base / med:5.2f}x {per_repeat:7.2f}x {versus}")  # fmt: skip
    best = max(args.workers, key=lambda w: base / medians[f"niffler-cold x{w}"])
    if 1 in args.workers:
        one = base / medians["niffler-cold x1"]
        print(f"ratio with 1 worker: {one:.2f}x (goal >= {GOAL_ONE_WORKER:.0f}x)")
    print(f"ratio at the best worker count (x{best}): {base / medians[f'niffler-cold x{best}']:.2f}x "
          f"(goal >= {GOAL_BEST:.0f}x)")  # fmt: skip
    print("ratio: median baseline seconds / median seconds; per-rep: median of the per-repeat ratios;")
    print("vs DIMSE: median niffler-cold DIMSE seconds / median DICOMweb seconds, same worker count")
    print("all retrieved the same SOP instances: yes")
    orthanc_log = work / "orthanc" / "orthanc.log"
    for name, repeat, seconds, failed, log in slow:
        print(f"outlier: {name} run {repeat} took {seconds:.2f} s (median {medians[name]:.2f} s), "
              f"{failed} list move(s) failed; logs: {log}, {orthanc_log}")  # fmt: skip
    # The images go (retrieved, generated, Orthanc's); the logs stay in the work folder.
    folders.clear()
    shutil.rmtree(work / "corpus", ignore_errors=True)
    shutil.rmtree(work / "orthanc" / "db", ignore_errors=True)
    print(f"logs kept in {work}")


if __name__ == "__main__":
    main()
