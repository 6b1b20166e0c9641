#!/usr/bin/env bash
# Install everything Niffler and its tests need on a fresh Debian machine:
# the real peers used by integration tests (Orthanc, DCMTK) from apt, and
# Niffler itself with every extra into a virtual environment at .venv.
# Idempotent: a second run only checks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NIFFLER_VENV:-$root/.venv}"

need_apt=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
[ -x /usr/bin/storescu ] || need_apt+=(dcmtk)  # not command -v: the venv has pynetdicom's storescu
# The burned-in text tests: Tesseract's English model for their judge, DejaVu fonts for the corpus.
[ -e /usr/share/tesseract-ocr/5/tessdata/eng.traineddata ] || need_apt+=(tesseract-ocr tesseract-ocr-eng)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)  # QIDO-RS/WADO-RS
if [ "${#need_apt[@]}" -gt 0 ]; then
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    # Stop the packaged Orthanc service from starting: tests run their own.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
        trap '"${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${need_apt[@]}"
    "${sudo_cmd[@]}" service orthanc stop >/dev/null 2>&1 || true
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e "$root[embedded,codecs,distributed,ocr,test]"
echo "niffler installed in $venv"
