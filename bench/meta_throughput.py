"""niffler-meta throughput with extraction on, against DCMTK's bare storescp, same corpus, same run.

DCMTK ``storescu`` (TCP_NODELAY=1) streams a generated corpus over loopback
into (a) DCMTK's ``storescp`` (receive only) and (b) ``niffler-meta``, run as
a user runs it (its console script, in its own process): receive, index,
header-only extraction, de-identification, upsert into a real MongoDB-wire
server (SecantusDB, in its own process), with upstream's four featuresets
(configs/featuresets/). niffler-meta runs twice per repeat: with the
pynetdicom accelerator on, and off (``NIFFLER_NET_ACCEL=0``). The order of
the three receivers rotates from one repeat to the next.

The corpus is realistic by default (``--corpus simple`` for the old one):
UTF-8 (ISO_IR 192) names in several scripts, nested sequences up to four
levels deep (some of undefined length), vendor private blocks with a
private sequence and a CSA-like blob, CT acquisition attributes, 12
instances per series, 4 series per study, 512 x 512 16-bit pixels. It is
sent series by series, instance by instance, as a PACS forwards it
(``--order directory``: storescu's directory scan, which on ext4 interleaves
all series at random; niffler-meta then touches every open series in each
store batch).

Every run writes into a folder of its own, all deleted at the end (see
benchlib: deleting the previous run's files just before a run slows it).

Prints the median seconds, files/s and MB/s of each receiver, its ratio to
storescp (the ratio of the medians, and the median of the per-repeat
ratios, each repeat's receivers measured back to back), and the lag from
the last C-STORE response to the last instance marked extracted (its
documents journaled in the store).

    .venv/bin/python bench/meta_throughput.py --files 2000 --size 512 --repeats 5
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import (
    RunFolders,
    corpus_arguments,
    count_files,
    load_note,
    make_corpus,
    median_ratio,
    run_dcmtk_scp,
    send,
    stop_process,
)
from pymongo import MongoClient

from niffler.common.deid import KEY_ENV
from niffler.meta_extraction.index import InstanceIndex
from niffler.meta_extraction.service import INDEX_FILE
from niffler.net.accel import ENV as ACCEL_ENV
from niffler.testing.peers import LOOPBACK, SecantusServer, free_port, wait_for_port
from niffler.testing.receiver import FEATURESETS

GOAL = 0.8
PEER = "dcmtk storescp"
UPSTREAM_FEATURESETS = ("featureset", "featureset1", "featureset2", "featureset3")
NIFFLER_META = Path(sys.executable).with_name("niffler-meta")


def wait_extracted(index_path: Path, expected: int, timeout: float) -> bool:
    """Poll the receiver's index until *expected* instances have left ``received``; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if index_path.exists():
            index = InstanceIndex(index_path, readonly=True)
            try:
                counts = index.counts()
            finally:
                index.close()
            if counts["extracted"] + counts["failed"] >= expected:
                if counts["failed"]:
                    raise SystemExit(f"niffler-meta failed to extract {counts['failed']} instances")
                return True
        time.sleep(0.02)
    return False


def run_meta(
    out: Path,
    corpus_dir: Path,
    files: list[Path] | None,
    expected: int,
    mongo_uri: str,
    database: str,
    accel: bool,
    lags: list[float],
    notes: list[str],
) -> float:
    """Start niffler-meta in *out*, send the corpus, wait for its extraction; return the send's seconds."""
    port = free_port()
    out.mkdir(parents=True)
    config = out / "meta.json"
    config.write_text(json.dumps({
        "QueryAet": f"NIFFLER:{port}",
        "BindAddress": LOOPBACK,
        "StorageFolder": str(out / "storage"),
        "StateFolder": str(out / "state"),
        "FeaturesetFolder": str(FEATURESETS),
        "MongoURI": mongo_uri,
        "DatabaseName": database,
    }))  # fmt: skip
    env = dict(os.environ)
    env[ACCEL_ENV] = "1" if accel else "0"
    log_path = out / "niffler-meta.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(NIFFLER_META), "--config", str(config)], stdout=log, stderr=log, env=env)
    try:
        wait_for_port(port, timeout=60, proc=proc)
        elapsed: float = send(port, "NIFFLER", corpus_dir, files)
        sent = time.perf_counter()
        if not wait_extracted(out / "state" / INDEX_FILE, expected, 600):
            raise SystemExit(f"niffler-meta did not finish extracting within 600 s (log: {log_path})")
        lags.append(time.perf_counter() - sent)
    finally:
        stop_process(proc, timeout=60)
    text = log_path.read_text(errors="replace")
    wanted = "pynetdicom accelerator on" if accel else "pynetdicom accelerator off"
    if wanted not in text:
        raise SystemExit(f"niffler-meta did not log {wanted!r} (log: {log_path})")
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    try:
        documents = {name: client[database][name].count_documents({}) for name in UPSTREAM_FEATURESETS}
    finally:
        client.close()
    notes.append(f"documents per featureset {documents}, last instance extracted {lags[-1]:.2f} s after")
    return elapsed


def main() -> None:
    parser = corpus_arguments(__doc__)
    parser.set_defaults(repeats=5)
    parser.add_argument("--corpus", choices=["realistic", "simple"], default="realistic")
    parser.add_argument("--per-series", type=int, default=None, help="instances per series (12; simple: 50)")
    parser.add_argument("--series-per-study", type=int, default=None, help="(4; simple: 1)")
    parser.add_argument("--order", choices=["series", "directory"], default="series",
                        help="series: instance by instance, series by series, as a PACS forwards; "
                        "directory: storescu's directory scan, which interleaves all series")  # fmt: skip
    parser.add_argument("--accel", nargs="+", choices=["on", "off"], default=["on", "off"],
                        help="niffler-meta runs with the pynetdicom accelerator on and/or off")  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "benchmark-secret-not-for-production")
    missing = [name for name in UPSTREAM_FEATURESETS if not (FEATURESETS / f"{name}.txt").exists()]
    if missing:
        raise SystemExit(f"{FEATURESETS} lacks upstream's {', '.join(missing)}")
    if not NIFFLER_META.exists():
        raise SystemExit(f"{NIFFLER_META} is missing: install Niffler into this interpreter's environment")

    realistic = args.corpus == "realistic"
    per_series = args.per_series or (12 if realistic else 50)
    series_per_study = args.series_per_study or (4 if realistic else 1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="niffler-bench-meta-"))
    corpus_dir = work / "corpus"
    corpus, total_mb = make_corpus(
        corpus_dir, args.files, args.size, per_series, realistic=realistic, series_per_study=series_per_study
    )
    files = sorted((i.path for i in corpus), key=lambda p: p.name) if args.order == "series" else None
    print(f"featuresets: {', '.join(sorted(p.stem for p in FEATURESETS.glob('*.txt')))}; {load_note()}")
    lags: dict[str, list[float]] = {}
    notes: list[str] = []
    with SecantusServer(work / "mongo") as mongo:
        runners: dict[str, Callable[[int, Path], float]] = {
            PEER: lambda rep, out: run_dcmtk_scp(out, corpus_dir, files)
        }
        for mode in args.accel:
            name = f"niffler-meta accel {mode}"
            lags[name] = []

            def meta(rep: int, out: Path, mode: str = mode, name: str = name) -> float:
                database = f"bench{rep}{mode}"
                return run_meta(out, corpus_dir, files, len(corpus), mongo.uri, database, mode == "on",
                                lags[name], notes)  # fmt: skip

            runners[name] = meta
        times: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        size = sum(i.path.stat().st_size for i in corpus)
        folders = RunFolders(work / "runs", args.repeats * len(names), size)
        for rep in range(args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                out = folders.new(name.replace(" ", "-"))
                elapsed = runners[name](rep, out)
                received = count_files(out if name == PEER else out / "storage")
                if received != len(corpus):
                    raise SystemExit(f"{name} received {received} of {len(corpus)} files")
                folders.done(out)
                times[name].append(elapsed)
                print(f"  run {rep + 1} {name:24s} {elapsed:6.2f} s   ({load_note()})")
                while notes:
                    print(f"    {notes.pop(0)}")
    print(f"\n{args.corpus} corpus, {len(corpus)} files ({total_mb:.0f} MB) sent in {args.order} order, "
          f"{args.repeats} repeats, {load_note()} at the end")  # fmt: skip
    header = ("median s", "files/s", "MB/s", "ratio", "per-rep", "lag s")
    print(f"{'receiver':24s} {header[0]:>9s} {header[1]:>8s} {header[2]:>6s} {header[3]:>6s} {header[4]:>8s} "
          f"{header[5]:>6s}")  # fmt: skip
    peer = statistics.median(times[PEER])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        ratio, per_repeat = peer / median, median_ratio(times[PEER], seconds)
        lag = f"{statistics.median(lags[name]):6.2f}" if name in lags else f"{'':6s}"
        print(f"{name:24s} {median:9.2f} {len(corpus) / median:8.0f} {total_mb / median:6.0f} "
              f"{ratio:5.2f}x {per_repeat:7.2f}x {lag}")  # fmt: skip
    print(f"ratio: median {PEER} seconds / median seconds (goal >= {GOAL}x with the accelerator on); "
          "per-rep: median of the per-repeat ratios; lag: median seconds from the last C-STORE response "
          "to the last instance extracted (goal <= 2 s)")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
