#!/usr/bin/env bash
# Fresh machine -> installed Niffler and a demo retrieval from a local PACS, on 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/install.sh"
exec "${NIFFLER_VENV:-$root/.venv}/bin/python" -m niffler.testing.demo "${1:-$root/demo}"
