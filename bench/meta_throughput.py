"""niffler-meta throughput with extraction on, against DCMTK's bare storescp, same corpus, same run.

DCMTK ``storescu`` (TCP_NODELAY=1) streams a generated corpus over loopback
into (a) DCMTK's ``storescp`` (receive only) and (b) niffler-meta (receive,
index, header-only extraction, de-identification, upsert into a real
MongoDB-wire server, SecantusDB, in its own process), alternating, several
times. Prints the median files/s and MB/s of each, their ratio, and the lag
from the last C-STORE response to the last document stored.

    .venv/bin/python bench/meta_throughput.py --files 2000 --size 512 --repeats 3
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import corpus_arguments, count_files, make_corpus, report, run_dcmtk_scp, send

from niffler.common.deid import KEY_ENV
from niffler.meta_extraction.service import open_service
from niffler.testing.peers import SecantusServer
from niffler.testing.receiver import loopback_meta_config


def run_meta(work: Path, corpus_dir: Path, mongo_uri: str, database: str, lags: list[float]) -> float:
    config = loopback_meta_config(
        work / "meta-out", work / "meta-state", MongoURI=mongo_uri, DatabaseName=database
    )
    service = open_service(config).start()
    try:
        elapsed = send(service.port, "NIFFLER", corpus_dir)
        sent = time.perf_counter()
        if not service.wait_idle(600):
            raise SystemExit("niffler-meta did not finish extracting within 600 s")
        lags.append(time.perf_counter() - sent)
        documents = service.store.db["featureset"].count_documents({})
        print(f"    {documents} series documented, lag after the last image {lags[-1]:.2f} s")
        return elapsed
    finally:
        service.stop()


def main() -> None:
    parser = corpus_arguments(__doc__)
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "benchmark-secret-not-for-production")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="niffler-bench-meta-"))
    corpus_dir = work / "corpus"
    corpus, total_mb = make_corpus(corpus_dir, args.files, args.size)
    lags: list[float] = []
    with SecantusServer(work / "mongo") as mongo:
        runners: dict[str, Callable[[int], float]] = {
            "dcmtk storescp": lambda rep: run_dcmtk_scp(work / "dcmtk-out", corpus_dir),
            "niffler-meta": lambda rep: run_meta(work, corpus_dir, mongo.uri, f"bench{rep}", lags),
        }
        times: dict[str, list[float]] = {name: [] for name in runners}
        for rep in range(args.repeats):
            for name, runner in runners.items():
                for leftover in ("dcmtk-out", "meta-out", "meta-state"):
                    shutil.rmtree(work / leftover, ignore_errors=True)
                elapsed = runner(rep)
                out = work / ("dcmtk-out" if name.startswith("dcmtk") else "meta-out")
                received = count_files(out)
                if received != len(corpus):
                    raise SystemExit(f"{name} received {received} of {len(corpus)} files")
                times[name].append(elapsed)
                print(f"  run {rep + 1} {name:16s} {elapsed:6.2f} s")
    report(times, len(corpus), total_mb, "dcmtk storescp", "niffler-meta")
    print(f"last document stored {statistics.median(lags):.2f} s (median) after the last image (goal <= 2 s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
