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
set +e
"$py" -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests; that is a failure, not a pass" >&2
    exit 1
fi
exit "$rc"
