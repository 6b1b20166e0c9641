"""Storage SCP throughput: Niffler's SCP against DCMTK's storescp, same corpus, same run.

DCMTK ``storescu`` (TCP_NODELAY=1) sends a generated corpus over loopback into
(a) DCMTK's ``storescp`` and (b) Niffler's Storage SCP, alternating, several
times; prints the median files/s and MB/s of each and their ratio.

    .venv/bin/python bench/scp_throughput.py --files 2000 --size 512 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from niffler.common.dicomnet import DEFAULT_MAX_PDU, StorageSCP
from niffler.testing.corpus import CorpusSpec, generate_corpus
from niffler.testing.peers import DcmtkStoreSCP, run_dcmtk


def send(port: int, aec: str, corpus_dir: Path) -> float:
    start = time.perf_counter()
    run_dcmtk(
        ["storescu", "-aet", "BENCH", "-aec", aec, "+sd", "+r", "127.0.0.1", str(port), str(corpus_dir)],
        timeout=1800,
    )
    return time.perf_counter() - start


def run_dcmtk_scp(work: Path, corpus_dir: Path) -> float:
    with DcmtkStoreSCP(work / "dcmtk-out", aet="DCMTKSCP") as scp:
        return send(scp.port, "DCMTKSCP", corpus_dir)


def run_niffler_scp(work: Path, corpus_dir: Path, max_pdu: int) -> float:
    with StorageSCP(
        work / "niffler-out", ae_title="NIFFLER", host="127.0.0.1", maximum_pdu_size=max_pdu
    ) as scp:
        return send(scp.port, "NIFFLER", corpus_dir)


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and ".niffler-incoming" not in p.parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each 16-bit image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--max-pdu", type=int, default=DEFAULT_MAX_PDU, help="Niffler's maximum PDU (0 = unlimited)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="niffler-bench-"))
    corpus_dir = work / "corpus"
    per_series = 50
    spec = CorpusSpec(
        patients=max(1, args.files // per_series),
        studies_per_patient=1,
        series_per_study=1,
        instances_per_series=per_series,
        rows=args.size,
        columns=args.size,
    )
    t0 = time.perf_counter()
    corpus = generate_corpus(corpus_dir, spec)
    total_mb = sum(i.path.stat().st_size for i in corpus) / 1e6
    print(f"corpus: {len(corpus)} files, {total_mb:.0f} MB, generated in {time.perf_counter() - t0:.1f} s")

    runners: dict[str, Callable[[], float]] = {
        "dcmtk storescp": lambda: run_dcmtk_scp(work, corpus_dir),
        "niffler StorageSCP": lambda: run_niffler_scp(work, corpus_dir, args.max_pdu),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    for rep in range(args.repeats):
        for name, runner in runners.items():
            out = work / ("dcmtk-out" if name.startswith("dcmtk") else "niffler-out")
            shutil.rmtree(out, ignore_errors=True)
            elapsed = runner()
            received = count_files(out)
            if received != len(corpus):
                raise SystemExit(f"{name} received {received} of {len(corpus)} files")
            times[name].append(elapsed)
            print(f"  run {rep + 1} {name:20s} {elapsed:6.2f} s")
            shutil.rmtree(out, ignore_errors=True)

    print(f"\n{'receiver':20s} {'median s':>9s} {'files/s':>9s} {'MB/s':>8s}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, med in medians.items():
        print(f"{name:20s} {med:9.2f} {len(corpus) / med:9.0f} {total_mb / med:8.0f}")
    ratio = medians["dcmtk storescp"] / medians["niffler StorageSCP"]
    print(f"\nratio niffler/dcmtk throughput: {ratio:.2f}x (goal >= 0.5x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
