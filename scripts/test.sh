#!/usr/bin/env bash
# Set up everything (apt peers + .venv) and run the checks and the whole test suite.
# Exit non-zero on any failure, and also when pytest collects no test (its exit 5).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/install.sh"
py="${NIFFLER_VENV:-$root/.venv}/bin/python"
cd "$root"
"$py" -m ruff check niffler tests bench
"$py" -m mypy
run_pytest() {
    set +e
    "$py" -m pytest -p no:cacheprovider "$@"
    local rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
        echo "error: pytest collected no tests; that is a failure, not a pass" >&2
        return 1
    fi
    return "$rc"
}
run_pytest "$@"
if [ "$#" -eq 0 ]; then
    # The network, cold and meta tests again with the pynetdicom accelerator off: the public-API
    # path must give the same results (niffler/net/accel.py).
    echo "== again without the pynetdicom accelerator (NIFFLER_NET_ACCEL=0)"
    NIFFLER_NET_ACCEL=0 run_pytest tests/integration/test_storage_scp.py tests/integration/test_cold.py \
        tests/integration/test_meta.py tests/integration/test_net_accel.py tests/integration/test_interop.py \
        tests/integration/test_net_failures.py
fi
