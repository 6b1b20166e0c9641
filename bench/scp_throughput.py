"""Storage SCP throughput: Niffler's SCP against DCMTK's storescp, same corpus, same run.

DCMTK ``storescu`` (TCP_NODELAY=1) sends a generated corpus over loopback into
(a) DCMTK's ``storescp`` and (b) Niffler's Storage SCP, alternating, several
times; prints the median files/s and MB/s of each and their ratio.

    .venv/bin/python bench/scp_throughput.py --files 2000 --size 512 --repeats 3
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchlib import corpus_arguments, count_files, make_corpus, report, run_dcmtk_scp, send

from niffler.net.scp import DEFAULT_MAX_PDU, StorageSCP


def run_niffler_scp(work: Path, corpus_dir: Path, max_pdu: int) -> float:
    with StorageSCP(
        work / "niffler-out", ae_title="NIFFLER", host="127.0.0.1", maximum_pdu_size=max_pdu
    ) as scp:
        return send(scp.port, "NIFFLER", corpus_dir)


def main() -> None:
    parser = corpus_arguments(__doc__)
    parser.add_argument(
        "--max-pdu", type=int, default=DEFAULT_MAX_PDU, help="Niffler's maximum PDU (0 = unlimited)"
    )
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="niffler-bench-"))
    corpus_dir = work / "corpus"
    corpus, total_mb = make_corpus(corpus_dir, args.files, args.size)

    runners: dict[str, Callable[[], float]] = {
        "dcmtk storescp": lambda: run_dcmtk_scp(work / "dcmtk-out", corpus_dir),
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

    report(times, len(corpus), total_mb, "dcmtk storescp", "niffler StorageSCP")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
