"""niffler-png throughput with burned-in text scrubbing, against scrubbing off, on at-risk and CT/MR corpora.

Two generated corpora:

- at risk: ``niffler.testing.burnedin`` (about 60 ultrasound-like frames, grey,
  colour and 3-frame cines, screen captures, XA, endoscopy and CT slices
  marked BurnedInAnnotation YES, 512x512 to 800x600, each with 3 to 5
  identifier strings drawn in), without its CT/MR controls;
- CT/MR: ``--files`` 16-bit 512x512 slices (``benchlib.make_corpus``), which
  the default policy (auto) does not scrub.

Each is converted by the real console script (a process per core, 16-bit
PNGs) with ``--scrub-burned-in-text auto`` and ``off``, alternating, each run
in a folder of its own, ``--repeats`` times. Prints the median seconds,
files/s and frames/s of each, the median of the per-repeat throughput
ratios auto/off by wall time and by CPU time (user + system of every
process: what the policy costs, whatever else the machine runs), and the
peak RSS of the largest process (a worker holds the text detection model).
On the CT/MR corpus the ratio should be 1.0 within noise: the detector is
never loaded for it. With ``--judge``, also the corpus test's
figures: the share of the strings the judge (Tesseract) reads in the
unscrubbed PNGs that it cannot read in the scrubbed ones, and the share of
pixels outside the drawn text that scrubbing changed.

    .venv/bin/python bench/png_scrub_throughput.py --files 600 --repeats 3 --judge
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import RunFolders, corpus_arguments, load_note, make_corpus, median_ratio

from niffler.common.deid import KEY_ENV
from niffler.testing.burnedin import TesseractJudge, evaluate_scrub, generate_burnedin_corpus

POLICIES = ("auto", "off")


#: Runs the command in argv, its output discarded, and prints the peak RSS (KiB) of the largest
#: process it waited for and the CPU seconds (user + system) of all of them: CPU time is what the
#: policy costs, and it stays meaningful on a machine that other work keeps busy.
_MEASURE = (
    "import resource, subprocess, sys; "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(u.ru_maxrss, u.ru_utime + u.ru_stime); sys.exit(rc)"
)


@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    peak_mb: int


def run_niffler(home: Path, out: Path, policy: str) -> Run:
    """Convert *home* into *out* with the console script under *policy*; return what it took."""
    cmd = [sys.executable, "-m", "niffler.png_extraction", "--dicom-home", str(home),
           "--output-directory", str(out), "--16-bit", "--scrub-burned-in-text", policy, "-q"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"niffler-png failed: {proc.stderr[-2000:]}")
    peak_kb, cpu = proc.stdout.split()[-2:]
    return Run(seconds, float(cpu), int(peak_kb) // 1024)


def measure(
    name: str, home: Path, files: int, frames: int, repeats: int, folders: RunFolders
) -> dict[str, Path]:
    """Convert *home* with each policy, alternating; print each run and the medians; return the outputs."""
    runs: dict[str, list[Run]] = {p: [] for p in POLICIES}
    last: dict[str, Path] = {}
    for repeat in range(repeats):
        for policy in POLICIES:
            out = folders.new(f"{name}-{policy}")
            run = run_niffler(home, out, policy)
            folders.done(out)
            runs[policy].append(run)
            last[policy] = out
            print(f"  {name} run {repeat + 1}, {policy}: {run.seconds:.2f} s, {run.cpu_seconds:.2f} CPU s, "
                  f"peak {run.peak_mb} MB ({load_note()})")  # fmt: skip
    print(f"\n{name}: {files} files, {frames} frames")
    print(f"{'ScrubBurnedInText':18s} {'median s':>9s} {'files/s':>9s} {'frames/s':>9s} {'CPU s':>7s} "
          f"{'CPU ms/frame':>12s} {'peak MB':>8s}")  # fmt: skip
    for policy in POLICIES:
        wall = statistics.median(r.seconds for r in runs[policy])
        cpu = statistics.median(r.cpu_seconds for r in runs[policy])
        peak = max(r.peak_mb for r in runs[policy])
        print(f"{policy:18s} {wall:9.2f} {files / wall:9.1f} {frames / wall:9.1f} {cpu:7.2f} "
              f"{1000 * cpu / frames:12.1f} {peak:8d}")  # fmt: skip
    wall_ratio = median_ratio([r.seconds for r in runs["off"]], [r.seconds for r in runs["auto"]])
    cpu_ratio = median_ratio([r.cpu_seconds for r in runs["off"]], [r.cpu_seconds for r in runs["auto"]])
    print(f"throughput auto / off: {wall_ratio:.2f}x by wall time, {cpu_ratio:.2f}x by CPU time "
          f"(medians of {repeats} back-to-back ratios)\n")  # fmt: skip
    return last


def main() -> None:
    parser = corpus_arguments(__doc__)
    parser.add_argument("--at-risk", type=int, default=60, help="at-risk images to generate")
    parser.add_argument("--judge", action="store_true", help="also print the judge's figures")
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "benchmark-secret-not-for-production")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="niffler-scrub-bench-"))
    print(f"cores: {os.cpu_count()}")
    cases = generate_burnedin_corpus(work / "at-risk", at_risk=args.at_risk, controls=0)
    frames = sum(c.frames for c in cases)
    print(f"at-risk corpus: {len(cases)} files, {frames} frames, {sum(len(c.texts) for c in cases)} strings")
    corpus, _ = make_corpus(work / "ct", args.files, args.size)
    folders = RunFolders(work / "runs", 4 * args.repeats, 200 * 1024 * 1024)
    try:
        outputs = measure("at-risk", work / "at-risk", len(cases), frames, args.repeats, folders)
        measure("CT/MR", work / "ct", len(corpus), len(corpus), args.repeats, folders)
        if args.judge:
            report = evaluate_scrub(cases, outputs["off"], outputs["auto"], TesseractJudge())
            print("judge (Tesseract, one line at a time, where each string was drawn):")
            print(report.describe())
    finally:
        folders.clear()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
