"""Helpers shared by the benchmarks: a generated corpus, a DCMTK sender, a median table.

DCMTK tools run by absolute path (a virtualenv's ``bin`` on PATH holds
pynetdicom's own ``findscu``/``movescu``/``storescu`` apps, which would be
measured instead), with ``TCP_NODELAY=1`` and no shell.

Each timed run writes into a folder of its own (:class:`RunFolders`), and
nothing is deleted until the end: on an ext4 filesystem without a journal
(this machine's root), creating a file within 60 s (300 s while the inode
table block is dirty) of deleting others in the same block group scans past
every recently freed inode (``recently_deleted()`` in ext4's inode
allocator). Deleting the previous run's output just before the next run made
file creation 5 to 20 times slower, and the runs slower one after the other.
Between runs (untimed) the written files are synced to disk and dropped from
the page cache, so that no run pays for the writeback, or the memory, of the
ones before it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from niffler.testing.corpus import CorpusSpec, Instance, generate_corpus
from niffler.testing.peers import LOOPBACK, dcmtk_env, free_port, wait_for_port

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
FINDSCU = "/usr/bin/findscu"
MOVESCU = "/usr/bin/movescu"


def corpus_arguments(doc: str | None) -> argparse.ArgumentParser:
    """Return a parser with the options every benchmark takes (corpus size, repeats, workdir)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each 16-bit image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    return parser


def make_corpus(
    folder: Path,
    files: int,
    size: int,
    per_series: int = 50,
    *,
    realistic: bool = False,
    series_per_study: int = 1,
) -> tuple[list[Instance], float]:
    """Generate about *files* 16-bit *size* x *size* images; return them and their total MB.

    *realistic* gives every header what a modality sends (UTF-8 names, nested
    sequences, private blocks, CT acquisition attributes: see
    :meth:`CorpusSpec.realistic`), *per_series* instances per series and
    *series_per_study* series per study.
    """
    per_study = per_series * series_per_study
    shape: dict[str, Any] = {
        "patients": max(1, round(files / per_study)),
        "studies_per_patient": 1,
        "series_per_study": series_per_study,
        "instances_per_series": per_series,
        "rows": size,
        "columns": size,
        "distinct_uids": True,
    }
    spec = CorpusSpec.realistic(**shape) if realistic else CorpusSpec(**shape)
    t0 = time.perf_counter()
    corpus = generate_corpus(folder, spec)
    if len({i.sop_uid for i in corpus}) != len(corpus):
        raise SystemExit("the generated corpus repeats a SOPInstanceUID")
    total_mb = sum(i.path.stat().st_size for i in corpus) / 1e6
    kind = "realistic" if realistic else "simple"
    series = len({i.series_uid for i in corpus})
    print(
        f"corpus ({kind}): {len(corpus)} files, {series} series, {total_mb:.0f} MB, "
        f"generated in {time.perf_counter() - t0:.1f} s"
    )
    return corpus, total_mb


def run_tool(
    args: Sequence[str], timeout: float = 300.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool given by absolute path (TCP_NODELAY=1, no shell); raise on failure if *check*."""
    if not os.path.isabs(args[0]):
        raise ValueError(f"run DCMTK tools by absolute path, not {args[0]!r}")
    result = subprocess.run(
        list(args), env=dcmtk_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise SystemExit(
            f"{args[0]} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result


def send(port: int, aec: str, corpus_dir: Path, files: Sequence[Path] | None = None) -> float:
    """Send with storescu (TCP_NODELAY=1) and return the seconds it took.

    Without *files*, storescu scans *corpus_dir* (``+sd +r``) and sends in
    directory order, which on most filesystems interleaves every series. With
    *files*, it sends those files in that order (one association either way).
    """
    what = [str(f) for f in files] if files is not None else ["+sd", "+r", str(corpus_dir)]
    start = time.perf_counter()
    run_tool([STORESCU, "-aet", "BENCH", "-aec", aec, LOOPBACK, str(port), *what], timeout=1800)
    return time.perf_counter() - start


@contextmanager
def storescp(out: Path, aet: str = "DCMTKSCP", port: int = 0) -> Iterator[int]:
    """Run DCMTK's storescp into *out* on 127.0.0.1 (a free port unless given); yield its port."""
    out.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(
        [STORESCP, "-aet", aet, "-od", str(out), "-uf", str(port)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc=proc)
        yield port
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a process this benchmark started, by its PID: SIGTERM, then SIGKILL after *timeout* s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def run_dcmtk_scp(out: Path, corpus_dir: Path, files: Sequence[Path] | None = None) -> float:
    with storescp(out, aet="DCMTKSCP") as port:
        return send(port, "DCMTKSCP", corpus_dir, files)


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.parts))


def report(
    times: dict[str, list[float]], files: int, total_mb: float, peer: str, ours: str, goal: float = 0.5
) -> float:
    """Print the median table and return the throughput ratio ours/peer."""
    print(f"\n{'receiver':28s} {'median s':>9s} {'files/s':>9s} {'MB/s':>8s}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, med in medians.items():
        print(f"{name:28s} {med:9.2f} {files / med:9.0f} {total_mb / med:8.0f}")
    ratio = medians[peer] / medians[ours]
    print(f"\nratio {ours} / {peer} throughput: {ratio:.2f}x (goal >= {goal:.1f}x)")
    return ratio


def median_ratio(peer: list[float], ours: list[float]) -> float:
    """The median of the per-repeat throughput ratios ours/peer (each repeat measured back to back)."""
    return statistics.median(p / o for p, o in zip(peer, ours, strict=True))


class RunFolders:
    """A new output folder for every timed run under *root*; all deleted by :meth:`clear`, none before.

    When the disk cannot hold *runs* x *bytes_per_run* with a 5 GB margin,
    :meth:`done` deletes each run's folder as before, and says so once.
    """

    def __init__(self, root: Path, runs: int, bytes_per_run: int) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.keep = shutil.disk_usage(root).free > runs * bytes_per_run + 5e9
        if not self.keep:
            print(f"not enough free disk to keep every run's output in {root}: each run's output is "
                  "deleted after it, which slows the runs that follow (see benchlib)")  # fmt: skip

    def new(self, name: str) -> Path:
        """Return a folder for one run (not created)."""
        self.count += 1
        return self.root / f"{name}-{self.count:03d}"

    def done(self, path: Path) -> None:
        """A run is over: keep its folder until :meth:`clear` (unless the disk is short), write it back.

        Untimed, so that every run starts from the same state: ``sync``, or a
        run pays for the writeback of the runs before it; then the files' pages
        leave the page cache, or the runs' gigabytes fill memory and the later
        runs pay for the reclaim.
        """
        if not self.keep:
            shutil.rmtree(path, ignore_errors=True)
        os.sync()
        for folder, _, names in os.walk(path):
            for name in names:
                try:
                    fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def load_note() -> str:
    """The 1-minute load average against the number of CPUs, for the record of a noisy machine."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


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
