"""Pure logic of the receiver pool: when it may fork. (Its networking is tested with real peers in
tests/integration: test_faults_cold.py and test_interop.py's move-x2 rows.)"""

from __future__ import annotations

import threading

from niffler.net.fanout import ReceiverPool, can_fork_receivers


def test_receivers_are_not_forked_while_another_thread_runs() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        assert not can_fork_receivers()
        pool = ReceiverPool(2, lambda stored, failed: None, ae_title="NIFFLER", host="127.0.0.1", port=0)  # type: ignore[arg-type,return-value]
        try:
            pool.start()
        except RuntimeError as exc:
            assert "before any other thread starts" in str(exc)
        else:
            raise AssertionError("a pool started with a thread running")
    finally:
        stop.set()
        other.join()
