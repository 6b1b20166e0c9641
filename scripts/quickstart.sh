#!/usr/bin/env bash
# Niffler's quick start: on a fresh Debian/Ubuntu machine, install everything, then run all four
# commands end to end on 127.0.0.1, with synthetic patients and no PACS or MongoDB of your own:
#   1. a local Orthanc PACS seeded with the last hour and a half of a small department, dated today
#      (CT, MR, X-ray room, ultrasound; the X-ray room's clock is 3 hours behind);
#   2. niffler-meta receives that stream into its embedded store;
#   3. niffler-cold retrieves the studies configs/sample-studies.csv names;
#   4. niffler-png converts them;
#   5. niffler-scanner-util writes the utilization and clock-skew reports with plots.
# It prints where each output is and the next commands to try, and stops every process it started.
#
# Usage: scripts/quickstart.sh [DIR]      (default: demo/ in the repository)
# DIR must be new, empty, or made by an earlier quick start (then its contents are replaced).
# Any other folder is refused (exit 2) and left untouched.
# NIFFLER_SKIP_INSTALL=1 skips the install step (scripts/install.sh) when everything is installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NIFFLER_VENV:-$root/.venv}"
marker=".niffler-quickstart"

case "${1:-}" in
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
dir="${1:-$root/demo}"

# Refuse a folder that is not ours before installing anything (niffler/testing/demo.py checks again).
if [ -e "$dir" ] && [ ! -d "$dir" ]; then
    echo "quickstart: $dir exists and is not a folder; give a new or empty folder" >&2
    exit 2
fi
if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] && [ ! -f "$dir/$marker" ]; then
    echo "quickstart: $dir is not empty and was not made by the quick start (it has no $marker file)," >&2
    echo "so it is left alone. Give a new or empty folder instead." >&2
    exit 2
fi

if [ "${NIFFLER_SKIP_INSTALL:-0}" != "1" ]; then
    # Debian and Ubuntu ship python3 without venv/ensurepip; install.sh creates the venv with them.
    if [ ! -x "$venv/bin/python" ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        sudo_cmd=()
        [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
        "${sudo_cmd[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends python3-venv
    fi
    bash "$root/scripts/install.sh"
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "quickstart: no Python environment at $venv; run without NIFFLER_SKIP_INSTALL" >&2
    exit 1
fi

# exec: the demo is this process from now on. It starts Orthanc and niffler-meta as its children and
# stops them by PID when it ends, also on Ctrl-C, SIGTERM or SIGHUP.
exec "$venv/bin/python" -m niffler.testing.demo "$dir" "${@:2}"
