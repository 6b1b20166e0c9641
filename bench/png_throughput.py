"""niffler-png throughput and peak memory, against DCMTK's dcm2pnm on the same files in the same run.

A generated corpus of 16-bit images (512x512 by default) is converted by
(a) ``niffler-png`` (a process per core, 16-bit PNGs, de-identified
metadata.csv and mapping.csv) and (b) DCMTK ``dcm2pnm --write-16-bit-png``,
one process per file as it works, as many at once as there are cores,
alternating, several times. Prints the median files/s and MB/s of each, the
ratio, the goal (8x upstream's 18 files/s on this 2-core machine, that is
150 files/s), and niffler-png's peak RSS (largest single process) on half
the corpus and on all of it: it should not grow with the number of files.

    .venv/bin/python bench/png_throughput.py --files 2000 --size 512 --repeats 3
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import corpus_arguments, make_corpus, run_measuring_rss

from niffler.common.deid import KEY_ENV

UPSTREAM_FILES_PER_S = 18.0
GOAL_FILES_PER_S = 150.0  # the issue: 8x upstream, "that is, 150 files/s or more"


def run_niffler(home: Path, out: Path) -> tuple[float, int]:
    """Return (seconds, peak RSS in MB of the largest niffler-png process)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "niffler.png_extraction", "--dicom-home", str(home),
           "--output-directory", str(out), "--16-bit", "-q"]  # fmt: skip
    return run_measuring_rss(cmd)


def run_dcm2pnm(files: list[Path], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def one(item: tuple[int, Path]) -> None:
        index, path = item
        subprocess.run(["dcm2pnm", "--write-16-bit-png", str(path), str(out / f"{index}.png")], check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, enumerate(files)))
    return time.perf_counter() - start


def main() -> None:
    args = corpus_arguments(__doc__).parse_args()
    os.environ.setdefault(KEY_ENV, "benchmark-secret-not-for-production")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="niffler-png-bench-"))
    corpus, total_mb = make_corpus(work / "corpus", args.files, args.size)
    files = [i.path for i in corpus]
    half = work / "half"
    for path in files[: len(files) // 2]:
        target = half / path.relative_to(work / "corpus")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    print(f"cores: {os.cpu_count()}")
    times: dict[str, list[float]] = {"niffler-png": [], "dcm2pnm": []}
    peaks: list[int] = []
    for repeat in range(args.repeats):
        seconds, peak = run_niffler(work / "corpus", work / "out-niffler")
        times["niffler-png"].append(seconds)
        peaks.append(peak)
        pngs = sum(1 for _ in (work / "out-niffler" / "extracted-images").rglob("*.png"))
        times["dcm2pnm"].append(run_dcm2pnm(files, work / "out-dcmtk"))
        print(f"  run {repeat + 1}: niffler-png {seconds:.2f} s ({pngs} PNGs, peak {peak} MB), "
              f"dcm2pnm {times['dcm2pnm'][-1]:.2f} s")  # fmt: skip
    _, half_peak = run_niffler(half, work / "out-half")
    print(f"\n{'converter':14s} {'median s':>9s} {'files/s':>9s} {'MB/s':>8s}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, med in medians.items():
        print(f"{name:14s} {med:9.2f} {len(files) / med:9.0f} {total_mb / med:8.0f}")
    rate = len(files) / medians["niffler-png"]
    print(f"\nratio niffler-png / dcm2pnm throughput: {medians['dcm2pnm'] / medians['niffler-png']:.2f}x")
    print(f"niffler-png: {rate:.0f} files/s = {rate / UPSTREAM_FILES_PER_S:.1f}x upstream's 18 files/s "
          f"(goal >= {GOAL_FILES_PER_S:.0f} files/s)")  # fmt: skip
    print(f"peak RSS (largest process): {half_peak} MB for {len(files) // 2} files, "
          f"{statistics.median(peaks)} MB for {len(files)} files")  # fmt: skip
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
