"""niffler-png end to end: real pydicom test files, a PHI-laden corpus, broken files, resume, Dask."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import png
import pydicom
import pytest
from pydicom.data import get_testdata_file

from niffler.common.config import load_config
from niffler.common.deid import DeidSettings, Policy, phi_check
from niffler.png_extraction import pipeline
from niffler.png_extraction.config import PngConfig
from niffler.png_extraction.pipeline import LEDGER_NAME, Converter, InlineExecutor, run, run_batch
from niffler.png_extraction.render import RenderOptions
from niffler.testing.corpus import CorpusSpec, generate_corpus
from niffler.testing.crashing import CrashingConverter

SECRET = "png-test-secret-0123456789"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "png_extraction.json"
TESTFILES = {
    "ct.dcm": "CT_small.dcm",
    "mr.dcm": "MR_small.dcm",
    "mr_j2k.dcm": "MR_small_jp2klossless.dcm",
    "mr_rle.dcm": "MR_small_RLE.dcm",
    "mr_jls.dcm": "MR_small_jpeg_ls_lossless.dcm",
    "mono1.dcm": "dicomdirtests/77654033/CR1/6154",
    "ybr_multiframe.dcm": "examples_ybr_color.dcm",
    "ybr422.dcm": "SC_ybr_full_422_uncompressed.dcm",
    "rgb.dcm": "examples_rgb_color.dcm",
    "palette.dcm": "examples_palette.dcm",
    "jpeg_baseline.dcm": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg_lossless.dcm": "SC_rgb_jpeg_gdcm.dcm",
    "rtdose.dcm": "rtdose.dcm",
}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIFFLER_DEID_KEY", SECRET)


def cli(*args: str | Path, check_rc: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NIFFLER_DEID_KEY": SECRET}
    proc = subprocess.run(
        [sys.executable, "-m", "niffler.png_extraction", "--config", str(CONFIG), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_png(path: Path) -> np.ndarray:
    width, height, rows, info = png.Reader(filename=str(path)).read()
    planes = info["planes"]
    array = np.array(list(rows))
    return array.reshape(height, width, planes) if planes > 1 else array.reshape(height, width)


def pngs_by_source(out: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for row in read_csv(out / "mapping.csv"):
        found.setdefault(row["dicom_path"], []).append(out / row["png_path"])
    return found


@pytest.fixture
def testfiles(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    for name, source in TESTFILES.items():
        path = get_testdata_file(source, download=False)
        assert path, f"pydicom test file {source} missing"
        target = home / name[:2] / name  # a level of folders: discovery must walk them
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return home


def test_pydicom_test_files_convert_with_the_right_pixels(testfiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # The renderer's pixels, as they are: the ultrasound files carry burned-in text that the default
    # policy blanks (tests/integration/test_png_scrub.py).
    cli("--dicom-home", testfiles, "--output-directory", out, "--scrub-burned-in-text", "off")
    pngs = pngs_by_source(out)
    assert sorted(Path(k).name for k in pngs) == sorted(TESTFILES)
    assert read_csv(out / "failures.csv") == []
    by_name = {Path(k).name: v for k, v in pngs.items()}
    assert len(by_name["ybr_multiframe.dcm"]) == 30 and len(by_name["rtdose.dcm"]) == 15

    # Lossless codecs decode to the same pixels, so the same PNG.
    mr = read_png(by_name["mr.dcm"][0])
    for variant in ("mr_j2k.dcm", "mr_rle.dcm", "mr_jls.dcm"):
        assert np.array_equal(read_png(by_name[variant][0]), mr), variant

    # CT (no window in the file): rescale, then its own min-max, to 16 bits, computed here independently.
    ds = pydicom.dcmread(testfiles / "ct" / "ct.dcm")
    assert "WindowCenter" not in ds
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (hu - hu.min()) / (hu.max() - hu.min())
    assert np.array_equal(read_png(by_name["ct.dcm"][0]), np.rint(expected * 65535).astype(int))

    # MONOCHROME1: windowed, then inverted (its low values are white).
    ds = pydicom.dcmread(testfiles / "mo" / "mono1.dcm")
    values = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    unit = np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    assert np.array_equal(read_png(by_name["mono1.dcm"][0]), np.rint((1 - unit) * 65535).astype(int))

    # Palette colour: each index looked up in the 16-bit tables, read here from the raw bytes.
    ds = pydicom.dcmread(testfiles / "pa" / "palette.dcm")
    tables = [
        np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, "<u2") for c in ("Red", "Green", "Blue")
    ]
    first = int(ds.RedPaletteColorLookupTableDescriptor[1])
    index = np.clip(ds.pixel_array.astype(int) - first, 0, len(tables[0]) - 1)
    assert np.array_equal(read_png(by_name["palette.dcm"][0]), np.stack([t[index] for t in tables], axis=-1))

    # RGB kept as is (scaled 8 -> 16 bits).
    ds = pydicom.dcmread(testfiles / "rg" / "rgb.dcm")
    assert np.array_equal(read_png(by_name["rgb.dcm"][0]), ds.pixel_array.astype(int) * 257)


def test_no_phi_in_metadata_png_paths_or_logs(tmp_path: Path) -> None:
    manifest = generate_corpus(tmp_path / "Patients", CorpusSpec(patients=3, rows=8, columns=8))
    # Folders named after the patient, as real exports often are.
    for inst in manifest:
        named = tmp_path / "home" / inst.patient_name.replace("^", "_") / inst.patient_id / inst.path.name
        named.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(inst.path, named)
    out = tmp_path / "out"
    proc = cli("--dicom-home", tmp_path / "home", "--output-directory", out, "-v")
    rows = read_csv(out / "metadata.csv")
    assert len(rows) == len(manifest)
    shareable = (out / "metadata.csv").read_text() + "\n".join(
        str(p.relative_to(out)) for p in (out / "extracted-images").rglob("*")
    )
    logs = proc.stderr
    for inst in manifest:
        for phi in (
            inst.patient_name,
            inst.patient_name.split("^")[0],
            inst.patient_id,
            inst.birth_date,
            inst.accession,
            inst.study_uid,
            inst.series_uid,
            inst.sop_uid,
            inst.path.name,
        ):
            assert phi not in shareable, phi
            assert phi not in logs, phi
    assert "Springfield" not in shareable and "REFERRER" not in shareable
    policy = Policy(DeidSettings(), SECRET.encode())
    for row in rows:
        assert (
            phi_check(
                {k: v for k, v in row.items() if v and k not in ("instance_key", "png_paths", "frames")},
                policy,
            )
            == []
        )
    # The pseudonymous PatientID in metadata.csv is the patient folder's name: users can join on it.
    assert {r["png_paths"].split("/")[1] for r in rows} == {r["PatientID"] for r in rows}
    # mapping.csv is the only link back; it names the originals by their full path.
    assert all(Path(r["dicom_path"]).is_file() for r in read_csv(out / "mapping.csv"))
    assert {Path(r["dicom_path"]).name for r in read_csv(out / "mapping.csv")} == {
        i.path.name for i in manifest
    }


def write_broken_corpus(home: Path, good: list[Path]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(good):
        shutil.copy(path, home / f"good{i}.dcm")
    data = good[0].read_bytes()
    (home / "truncated.dcm").write_bytes(data[: len(data) - 200])
    (home / "truncated_header.dcm").write_bytes(data[:300])
    (home / "notes.txt").write_text("not an image\n")
    (home / "random.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    ds = pydicom.dcmread(good[0])
    del ds.PixelData
    ds.save_as(home / "no_pixels.dcm")
    ds = pydicom.dcmread(good[0])
    ds.PhotometricInterpretation = "CMYK"
    ds.save_as(home / "cmyk.dcm")


def test_broken_files_are_categorised_and_the_batch_completes(tmp_path: Path) -> None:
    manifest = generate_corpus(tmp_path / "corpus", CorpusSpec(patients=1, rows=32, columns=32))
    home = tmp_path / "home"
    write_broken_corpus(home, [i.path for i in manifest])
    out = tmp_path / "out"
    proc = cli("--dicom-home", home, "--output-directory", out, check_rc=2)
    failures = {Path(r["file"]).name: r["reason"] for r in read_csv(out / "failures.csv")}
    assert failures == {
        "truncated.dcm": "decode-error",
        "truncated_header.dcm": "unreadable-header",
        "notes.txt": "not-dicom",
        "random.bin": "not-dicom",
        "no_pixels.dcm": "no-pixel-data",
        "cmyk.dcm": "unsupported-photometric",
    }
    for name, reason in failures.items():
        assert (out / "failed-dicom" / reason / name).read_bytes() == (home / name).read_bytes()
    assert {Path(r["dicom_path"]).name for r in read_csv(out / "mapping.csv")} == {
        f"good{i}.dcm" for i in range(len(manifest))
    }
    assert "6 DICOM file(s) failed" not in proc.stderr and "4 DICOM file(s) failed" in proc.stderr


def test_full_disk_is_a_write_error_and_loses_nothing(tmp_path: Path) -> None:
    """A file-size limit makes every PNG write fail with EFBIG, as a full disk fails with ENOSPC."""
    manifest = generate_corpus(
        tmp_path / "corpus",
        CorpusSpec(patients=1, studies_per_patient=1, series_per_study=1, rows=64, columns=64),
    )
    script = f"""
import resource, signal, sys
from pathlib import Path
from niffler.common.config import load_config
from niffler.common.deid import DeidSettings, Policy
from niffler.png_extraction import pipeline
from niffler.png_extraction.pipeline import Converter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
home, out = Path({str(manifest[0].path.parent)!r}), Path({str(tmp_path / "out")!r})
conv = Converter(home, out, Policy(DeidSettings(), b"x" * 32))
result = conv.convert({manifest[0].path.name!r})
print(result.reason, "|", result.error)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("write-error |"), proc.stdout + proc.stderr
    assert "File too large" in proc.stdout
    assert not list((tmp_path / "out").rglob("*.png")) and not list((tmp_path / "out").rglob("*.tmp"))
    # The source is untouched and linked under failed-dicom/ for a later retry.
    assert (tmp_path / "out" / "failed-dicom" / "write-error" / manifest[0].path.name).exists()


def test_same_file_names_in_different_series_never_collide(tmp_path: Path) -> None:
    manifest = generate_corpus(tmp_path / "corpus", CorpusSpec(patients=1, rows=8, columns=8))
    home = tmp_path / "home"
    for inst in manifest:  # every series folder holds IM0001.dcm, IM0002.dcm, ...
        folder = home / inst.series_uid
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(inst.path, folder / f"IM{len(list(folder.iterdir())) + 1:04d}.dcm")
    out = tmp_path / "out"
    cli("--dicom-home", home, "--output-directory", out, "--flattened-to-level", "patient")
    pngs = list((out / "extracted-images").rglob("*.png"))
    assert len(pngs) == len(manifest) == len(read_csv(out / "mapping.csv"))


def test_levels_make_patient_study_series_folders(tmp_path: Path) -> None:
    manifest = generate_corpus(tmp_path / "home", CorpusSpec(rows=8, columns=8))
    out = tmp_path / "out"
    cli("--dicom-home", tmp_path / "home", "--output-directory", out, "--flattened-to-level", "series")
    parts = [Path(r["png_path"]).parts for r in read_csv(out / "mapping.csv")]
    assert {len(p) for p in parts} == {5}
    assert (
        len({p[1] for p in parts}) == 2
        and len({p[2] for p in parts}) == 4
        and len({p[3] for p in parts}) == 8
    )
    assert len(parts) == len(manifest)


def test_header_options(tmp_path: Path) -> None:
    generate_corpus(tmp_path / "home", CorpusSpec(patients=1, rows=8, columns=8))
    featureset = tmp_path / "fs.txt"
    featureset.write_text("Modality\nPatientID\nPatientName\n0x00091011\n")
    base = {"DICOMHome": str(tmp_path / "home"), "UseProcesses": 1}

    def columns(**keys: object) -> set[str]:
        out = tmp_path / f"o{len(keys)}{'_'.join(sorted(keys))}"
        config = load_config(PngConfig, [], {**base, "OutputDirectory": out, **keys})
        run(config, show_progress=False)
        with open(config.OutputDirectory / "metadata.csv", newline="") as handle:
            return set(next(csv.reader(handle)))

    fixed = {"instance_key", "png_paths", "frames", "text_regions_redacted"}
    assert columns(SpecificHeadersOnly=True, FeaturesetFile=featureset) == fixed | {"Modality", "PatientID"}
    everything = columns(PublicHeadersOnly=False, RetainSafePrivate=True, SafePrivateTags=["0x00091011"])
    assert "00091011" in everything
    assert "00091011" not in columns(RetainSafePrivate=True, SafePrivateTags=["0x00091011"])
    common = columns(CommonHeadersOnly=True)
    assert "Modality" in common and "RequestAttributesSequence_0_RequestedProcedureID" not in common


def test_resume_after_kill_redoes_nothing(tmp_path: Path) -> None:
    manifest = generate_corpus(
        tmp_path / "home", CorpusSpec(patients=10, studies_per_patient=3, rows=64, columns=64)
    )
    out = tmp_path / "out"
    env = {**os.environ, "NIFFLER_DEID_KEY": SECRET}
    args = [
        sys.executable,
        "-m",
        "niffler.png_extraction",
        "--config",
        str(CONFIG),
        "--dicom-home",
        str(tmp_path / "home"),
        "--output-directory",
        str(out),
        "--use-processes",
        "1",
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and done < 40:
        time.sleep(0.05)
        try:
            with sqlite3.connect(out / LEDGER_NAME) as db:
                done = db.execute("SELECT COUNT(*) FROM entries WHERE state = 'done'").fetchone()[0]
        except sqlite3.Error:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 40 <= done < len(manifest), "kill the run mid-way"
    before = {p: p.stat().st_mtime_ns for p in (out / "extracted-images").rglob("*.png")}
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=300)
    after = {p: p.stat().st_mtime_ns for p in (out / "extracted-images").rglob("*.png")}
    rows = read_csv(out / "metadata.csv")
    assert len(rows) == len(after) == len(manifest)
    assert len({r["instance_key"] for r in rows}) == len(manifest)
    kept = [p for p in before if after.get(p) == before[p]]
    assert len(kept) >= done, "files converted before the kill were converted again"
    # Rows are in a stable order: a third run rewrites metadata.csv byte for byte.
    first = (out / "metadata.csv").read_bytes()
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=300)
    assert (out / "metadata.csv").read_bytes() == first


def test_a_file_that_kills_its_worker_is_listed_and_the_batch_goes_on(tmp_path: Path) -> None:
    manifest = generate_corpus(tmp_path / "home", CorpusSpec(patients=2, rows=8, columns=8))
    shutil.copy(manifest[0].path, tmp_path / "home" / "crash-me.dcm")
    policy = Policy(DeidSettings(), SECRET.encode())
    out = tmp_path / "out"

    def run_once() -> pipeline.BatchSummary:
        converter = CrashingConverter(tmp_path / "home", out, policy, RenderOptions(), print_images=False)
        executor = pipeline.PoolExecutor(2)
        try:
            return run_batch(converter, executor, batch_size=4, show_progress=False)
        finally:
            executor.close()

    summary = run_once()
    assert summary.converted == len(manifest)
    assert summary.failed == {"worker-crash": 1}
    with open(out / "failures.csv", newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert [(Path(f["file"]).name, f["reason"]) for f in failures] == [("crash-me.dcm", "worker-crash")]
    # A rerun resumes without touching it again: no crash loop.
    again = run_once()
    assert (again.converted, again.already_done, sum(again.failed.values())) == (0, len(manifest) + 1, 0)


def test_memory_stays_flat_as_the_corpus_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak Python allocations for 4x the files stay within a small constant of the smaller run.

    The CSVs are written from the ledger a page at a time; a page of 50 rows
    here (500 in production) shows flatness on a corpus small enough to test.
    """
    monkeypatch.setattr(pipeline, "_CSV_PAGE", 50)
    policy = Policy(DeidSettings(), SECRET.encode())

    def peak(files: int) -> int:
        home = tmp_path / f"home{files}"
        generate_corpus(home, CorpusSpec(patients=files // 8, rows=4, columns=4))
        converter = Converter(home, tmp_path / f"out{files}", policy, RenderOptions(), print_images=False)
        tracemalloc.start()
        run_batch(converter, InlineExecutor(), show_progress=False)
        _, high = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return high

    small, large = peak(200), peak(800)
    assert large < small * 1.3 + 256 * 1024, (small, large)


def test_dask_cluster_gives_the_same_output_as_the_local_pool(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    generate_corpus(tmp_path / "home", CorpusSpec(rows=16, columns=16))
    local = PngConfig(DICOMHome=tmp_path / "home", OutputDirectory=tmp_path / "local", UseProcesses=2)
    on_dask = PngConfig(DICOMHome=tmp_path / "home", OutputDirectory=tmp_path / "dask")
    run(local, show_progress=False)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        summary = run(on_dask, dask_scheduler=cluster.scheduler_address, show_progress=False)
    assert summary.converted == 16
    assert (tmp_path / "dask" / "metadata.csv").read_bytes() == (
        tmp_path / "local" / "metadata.csv"
    ).read_bytes()
    for row in read_csv(tmp_path / "dask" / "mapping.csv"):
        assert (tmp_path / "dask" / row["png_path"]).read_bytes() == (
            tmp_path / "local" / row["png_path"]
        ).read_bytes()


def test_bad_config_and_missing_home_are_clear_errors(tmp_path: Path) -> None:
    proc = cli("--dicom-home", tmp_path / "nowhere", "--output-directory", tmp_path / "o", check_rc=None)
    assert proc.returncode != 0 and "is not a folder" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"DICOMHome": "x", "FlattenedToLevel": "instance"}')
    proc = subprocess.run(
        [sys.executable, "-m", "niffler.png_extraction", "--config", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "FlattenedToLevel" in proc.stderr


def test_exit_codes_follow_the_contract(tmp_path: Path) -> None:
    """0 all done; 1 configuration, usage or environment error; 2 files failed, also after a resume."""
    home = tmp_path / "home"
    generate_corpus(home, CorpusSpec(patients=1, rows=8, columns=8))
    (home / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00" + b"1.2\x00")
    (home / "retrieval-report.csv").write_text("line,status\n")  # niffler-cold's own output: ignored
    out = tmp_path / "out"
    first = cli("--dicom-home", home, "--output-directory", out, "--use-processes", "1", check_rc=2)
    assert "not-dicom" not in first.stderr
    # Resumed, nothing is retried, and the failure still stands.
    again = cli("--dicom-home", home, "--output-directory", out, "--use-processes", "1", check_rc=2)
    assert "failed in an earlier run, not retried: 1" in again.stderr
    (home / "broken.dcm").unlink()
    shutil.copy(next(home.rglob("*.dcm")), home / "broken.dcm")
    cli("--dicom-home", home, "--output-directory", out, "--use-processes", "1", "--retry-failed", check_rc=0)
    # A mistyped DICOMHome: files, but none DICOM.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not DICOM")
    empty = cli("--dicom-home", tmp_path / "notes", "--output-directory", tmp_path / "o2", check_rc=1)
    assert "holds no DICOM file" in empty.stderr
    # Usage and configuration errors.
    assert "No such option" in cli("--no-such-option", check_rc=1).stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"DICOMHom": "x"}')
    proc = subprocess.run([sys.executable, "-m", "niffler.png_extraction", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and "did you mean 'DICOMHome'" in proc.stderr
    # An unwritable output: one line, no traceback.
    blocked = cli("--dicom-home", home, "--output-directory", tmp_path / "bad.json" / "out", check_rc=1)
    assert blocked.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in blocked.stderr
