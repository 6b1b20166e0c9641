"""niffler-meta's pure parts: featuresets, documents, config, the index and the purge."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from niffler.common.config import load_config
from niffler.common.deid import DeidSettings, Policy, phi_check
from niffler.common.errors import ConfigError, DeidError, InputError
from niffler.meta_extraction.cli import load_meta_config
from niffler.meta_extraction.config import MetaConfig
from niffler.meta_extraction.extract import (
    build_documents,
    header_tags,
    load_featuresets,
    parse_line,
    read_header,
)
from niffler.meta_extraction.index import InstanceIndex
from niffler.meta_extraction.purge import purge
from niffler.testing.corpus import CorpusSpec, generate_corpus
from niffler.testing.hostile import write_hostile_corpus
from niffler.testing.receiver import FEATURESETS

KEY = b"unit-test-secret-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("Modality", "Modality"),
        ("0x0051100F", "0051100F"),
        ("0x0051,0x100F", "0051100F"),
        ("(0051,100F)", "0051100F"),
        ("0x00180050", "SliceThickness"),
        ("ScanPitchRatio", None),
    ],
)
def test_featureset_lines(line: str, key: str | None) -> None:
    assert parse_line(line) == key


def test_shipped_featuresets_load_with_upstream_names(caplog: pytest.LogCaptureFixture) -> None:
    sets = {fs.name: fs for fs in load_featuresets(REPO / "configs" / "featuresets")}
    assert set(sets) == {"featureset", "featureset1", "featureset2", "featureset3"}  # upstream's four
    assert sets["featureset3"].keys == (
        "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AcquisitionDate", "AcquisitionTime",
        "BodyPartExamined", "Modality", "DeviceSerialNumber", "SOPInstanceUID",
    )  # fmt: skip
    assert "PerformedStationNameCodeSequence" in sets["featureset2"].keys
    assert sets["featureset"].keys[:3] == ("PatientID", "StudyInstanceUID", "StudyDate")
    assert "DeviceSerialNumber" in sets["featureset"].keys
    assert sets["featureset1"].keys[-2:] == ("0051100F", "0051100C")
    assert sets["featureset1"].keys.count("PercentPhaseFieldOfView") == 1
    assert "featureset.txt line 18: 'ScanPitchRatio'" in caplog.text


def test_featureset_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no"):
        load_featuresets(tmp_path)
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match=r"empty\.txt names no attribute"):
        load_featuresets(tmp_path)
    with pytest.raises(ConfigError, match="is not a folder"):
        load_featuresets(tmp_path / "missing")


def header() -> Dataset:
    ds = Dataset()
    ds.PatientID = "000123"
    ds.PatientName = "DOE^JANE"
    ds.Modality = "MR"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.DeviceSerialNumber = "SN42"
    ds.EchoTime = "4.5"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5"
    ds.ReferencedImageSequence = [ref]
    bad = Dataset()
    bad.PatientName = "DOE^JANE"
    ds.AnatomicRegionSequence = [bad]
    ds.add_new(0x00510010, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0051100F, "LO", "HEA;HEP")
    return ds


def test_documents_hold_exactly_the_featureset_deidentified(tmp_path: Path) -> None:
    (tmp_path / "fs.txt").write_text(
        "PatientID\nPatientName\nModality\nEchoTime\nReferencedImageSequence\nAnatomicRegionSequence\n0x0051100F\n"
    )
    sets = load_featuresets(tmp_path)
    policy = Policy(DeidSettings(), KEY)
    doc = build_documents(header(), sets, policy)["fs"]
    assert doc == {
        "PatientID": policy.pseudonymizer.identifier("PatientID", "000123"),
        "Modality": "MR",
        "EchoTime": 4.5,
        "ReferencedImageSequence_0_ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.4",
        "ReferencedImageSequence_0_ReferencedSOPInstanceUID": policy.pseudonymizer.uid("1.2.3.4.5"),
    }
    assert phi_check(doc, policy) == []
    kept = Policy(DeidSettings(DeidOverrides={"0x0051100F": "keep"}), KEY)
    assert build_documents(header(), sets, kept)["fs"]["0051100F"] == "HEA;HEP"


def test_config_upstream_keys_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"QueryAet": "NIFFLER:4243", "StorageFolder": "/data", "PurgeTime": "23:59"}))
    config = load_meta_config(path, aet="RECV", port=11112)
    assert config.QueryAet == "RECV:11112"
    assert config.FeaturesetFolder == tmp_path / "featuresets"  # relative to the file
    assert config.RetainDeviceIdentity and config.RetainLongitudinalFullDates
    for bad, message in [
        ({"PurgeTime": "25:00"}, "PurgeTime"),
        ({"ExtractionGranularity": "study"}, "ExtractionGranularity"),
        ({"AllowedCallingAets": ["WAY-TOO-LONG-AE-TITLE"]}, "AllowedCallingAets"),
        ({"Featuresets": "x"}, "Featuresets"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            load_config(MetaConfig, [path])


def test_purge_deletes_exactly_the_extracted_quiet_series(tmp_path: Path) -> None:
    """A: extracted, quiet. B: extracted, recent. C: one waiting. D: one failed. E: rewritten."""
    storage = tmp_path / "data"
    index = InstanceIndex(tmp_path / "index.sqlite")
    rows = []
    for series, n, received_at in [
        ("A", 3, 100.0),
        ("B", 2, 900.0),
        ("C", 2, 100.0),
        ("D", 2, 100.0),
        ("E", 1, 100.0),
    ]:
        for i in range(n):
            path = storage / f"p{series}" / f"s{series}" / f"{i}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 10)
            rows.append((f"{series}{i}", series, path.relative_to(storage).as_posix(), received_at,
                         path.stat().st_mtime_ns))  # fmt: skip
    index.record(rows)
    index.mark([r[0] for r in rows], "extracted")
    index.mark(["C1"], "received")
    index.mark(["D0"], "failed", "unreadable")
    rewritten = storage / "pE" / "sE" / "0.dcm"
    os.utime(rewritten, ns=(1, 1))  # a resend landed after the index recorded it

    result = purge(index, storage, quiet_before=500.0)
    assert result.files == 3 and result.bytes == 30 and result.skipped == 1
    left = sorted(p.relative_to(storage).as_posix() for p in storage.rglob("*.dcm"))
    assert left == ["pB/sB/0.dcm", "pB/sB/1.dcm", "pC/sC/0.dcm", "pC/sC/1.dcm", "pD/sD/0.dcm", "pD/sD/1.dcm",
                    "pE/sE/0.dcm"]  # fmt: skip
    assert not (storage / "pA").exists()  # its empty folders went too
    assert storage.exists()
    counts = index.counts()
    assert counts["purged"] == 3 and counts["failed"] == 1 and counts["received"] == 1
    # A second run finds nothing more to do.
    assert purge(index, storage, quiet_before=500.0).files == 0
    index.close()


def test_index_counts_distinct_instances_across_resends(tmp_path: Path) -> None:
    index = InstanceIndex(tmp_path / "index.sqlite")
    index.record([("i1", "s", "a/1.dcm", 10.0, 1), ("i2", "s", "a/2.dcm", 11.0, 1)])
    index.mark(["i1", "i2"], "extracted")
    index.record([("i2", "s", "a/2.dcm", 50.0, 2)])  # resend of i2
    stats = index.series_stats(["s"])["s"]
    assert (stats.instances, stats.first_received, stats.last_received) == (2, 10.0, 50.0)
    assert [p.sop_key for p in index.pending(10)] == ["i2"]
    index.close()


def _documents_or_error(path: Path, tags: list[int] | None, sets: list[Any], policy: Policy) -> Any:
    try:
        return build_documents(read_header(path, tags), sets, policy)
    except (InputError, DeidError) as exc:
        return type(exc).__name__


def test_reading_only_the_featureset_tags_gives_the_same_documents(tmp_path: Path) -> None:
    """niffler-meta reads only :func:`header_tags`: on realistic and hostile headers (private blocks,
    nested and undefined-length sequences, repeating groups, odd character sets) the documents must be
    those of a full read, for upstream's featuresets and for one that names private tags."""
    folder = tmp_path / "featuresets"
    shutil.copytree(FEATURESETS, folder)
    (folder / "private.txt").write_text(
        "0x0019100B\n(0019,105A)\n0x0051100F\n0x00451040\n0x00291008\nOtherPatientIDsSequence\n"
        "AnatomicRegionSequence\n60000010\nReferencedImageSequence\nInstitutionName\nPixelSpacing\n"
    )
    sets = load_featuresets(folder)
    tags = header_tags(sets)
    assert {0x00190010, 0x00290010, 0x00450010, 0x00510010} <= set(tags)  # the named blocks' creators
    overrides = {t: "keep" for t in ("0x0019100B", "0x0019105A", "0x0051100F", "0x00451040", "0x00451003")}
    policy = Policy(DeidSettings(DeidOverrides=overrides), KEY)
    realistic = generate_corpus(
        tmp_path / "realistic", CorpusSpec.realistic(patients=2, studies_per_patient=1, series_per_study=2,
                                                     instances_per_series=2, rows=8, columns=8)
    )  # fmt: skip
    hostile = write_hostile_corpus(tmp_path / "hostile", deep_depth=80)
    paths = [i.path for i in realistic] + list(hostile.files)
    compared = 0
    for path in paths:
        full = _documents_or_error(path, None, sets, policy)
        partial = _documents_or_error(path, tags, sets, policy)
        if isinstance(full, str):  # refused in full: refused or documented alike when read in part
            continue
        assert partial == full, path.name
        compared += 1
    assert compared >= len(realistic) + len(hostile.files) - len(hostile.failing)
    private = build_documents(read_header(realistic[0].path, tags), sets, policy)["private"]
    assert private["0019100B"] == 1.0 and private["0051100F"] == "HEA;HEP"
    assert private["00451040_0_00451003"] == 0.625 and private["PixelSpacing"]
