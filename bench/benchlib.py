"""Helpers shared by the benchmarks: a generated corpus, a DCMTK sender, a median table."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from niffler.testing.corpus import CorpusSpec, Instance, generate_corpus
from niffler.testing.peers import DcmtkStoreSCP, storescu


def corpus_arguments(doc: str | None) -> argparse.ArgumentParser:
    """Return a parser with the options every benchmark takes (corpus size, repeats, workdir)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each 16-bit image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    return parser


def make_corpus(folder: Path, files: int, size: int, per_series: int = 50) -> tuple[list[Instance], float]:
    """Generate about *files* 16-bit *size* x *size* images; return them and their total MB."""
    spec = CorpusSpec(
        patients=max(1, files // per_series),
        studies_per_patient=1,
        series_per_study=1,
        instances_per_series=per_series,
        rows=size,
        columns=size,
    )
    t0 = time.perf_counter()
    corpus = generate_corpus(folder, spec)
    total_mb = sum(i.path.stat().st_size for i in corpus) / 1e6
    print(f"corpus: {len(corpus)} files, {total_mb:.0f} MB, generated in {time.perf_counter() - t0:.1f} s")
    return corpus, total_mb


def send(port: int, aec: str, corpus_dir: Path) -> float:
    """Send *corpus_dir* with storescu (TCP_NODELAY=1) and return the seconds it took."""
    start = time.perf_counter()
    storescu(port, corpus_dir, aec=aec, aet="BENCH", timeout=1800)
    return time.perf_counter() - start


def run_dcmtk_scp(out: Path, corpus_dir: Path) -> float:
    with DcmtkStoreSCP(out, aet="DCMTKSCP") as scp:
        return send(scp.port, "DCMTKSCP", corpus_dir)


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.parts))


def report(times: dict[str, list[float]], files: int, total_mb: float, peer: str, ours: str) -> float:
    """Print the median table and return the throughput ratio ours/peer."""
    print(f"\n{'receiver':24s} {'median s':>9s} {'files/s':>9s} {'MB/s':>8s}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, med in medians.items():
        print(f"{name:24s} {med:9.2f} {files / med:9.0f} {total_mb / med:8.0f}")
    ratio = medians[peer] / medians[ours]
    print(f"\nratio {ours} / {peer} throughput: {ratio:.2f}x (goal >= 0.5x)")
    return ratio


# Runs the command given in argv, its output discarded, and prints the peak RSS (KiB) of the
# largest process it waited for (the command or one of its workers).
_MEASURE = (
    "import resource, subprocess, sys; "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def run_measuring_rss(cmd: list[str], cwd: Path | None = None) -> tuple[float, int]:
    """Run *cmd*; return (seconds, peak RSS in MB of its largest process); exit with stderr on failure."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, cwd=cwd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {proc.stderr[-2000:]}")
    return elapsed, int(proc.stdout.split()[-1]) // 1024
