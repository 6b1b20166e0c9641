"""The shipped PS3.15 Table E.1-1 is the merge of its two sources (scripts/gen_deid_table.py)."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from niffler.common import deid
from niffler.common.deid import TABLE_EDITION

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = Path(deid.__file__).parent / "data" / f"ps3.15-e1-1-{TABLE_EDITION}.csv"

#: Codes the engine reads (deid._IN_PLACE); every row must carry one.
ENGINE_CODES = {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}


@pytest.fixture(scope="module")
def gen() -> Iterator[ModuleType]:
    script = ROOT / "scripts" / "gen_deid_table.py"
    spec = importlib.util.spec_from_file_location("gen_deid_table", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def shipped() -> dict[str, str]:
    with SHIPPED.open(encoding="utf-8", newline="") as handle:
        return {row["tag"]: row["action"] for row in csv.DictReader(handle)}


def _write_innolitics(path: Path, entries: list[dict[str, str]]) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


# --- the shipped file and its sources ------------------------------------------------------------


def test_shipped_table_is_the_merge_of_both_sources(gen: ModuleType) -> None:
    """The data file is exactly what scripts/gen_deid_table.py makes from both sources."""
    assert SHIPPED.read_text(encoding="utf-8") == gen.render(TABLE_EDITION)


def test_vendored_innolitics_file_is_the_upstream_blob(gen: ModuleType) -> None:
    """The vendored file is byte for byte the upstream file named in scripts/sources/README.md."""
    data = gen.INNOLITICS_FILE.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    assert blob == gen.INNOLITICS_SOURCE["blob"]
    readme = (gen.INNOLITICS_FILE.parent / "README.md").read_text(encoding="utf-8")
    for value in gen.INNOLITICS_SOURCE.values():
        assert value in readme


def test_every_tag_of_either_source_is_shipped_at_least_as_strict(
    gen: ModuleType, shipped: dict[str, str]
) -> None:
    anonymizer = gen.anonymizer_rows(TABLE_EDITION)
    innolitics = gen.innolitics_rows().rows
    assert shipped.keys() == anonymizer.keys() | innolitics.keys()
    for source in (anonymizer, innolitics):
        for tag, action in source.items():
            assert gen.stricter(shipped[tag], action) == shipped[tag], (tag, action, shipped[tag])
    assert set(shipped.values()) <= ENGINE_CODES


def test_merge_accounting_of_the_pinned_sources(gen: ModuleType) -> None:
    """dicom-anonymizer 2.1.0 (2026c) and innolitics (2024b) as vendored: what each contributes.

    The sources are pinned, so these numbers change only when one of them is updated on
    purpose; then read the script's summary and update them.
    """
    innolitics = gen.innolitics_rows()
    merged = gen.merge(gen.anonymizer_rows(TABLE_EDITION), innolitics.rows)
    assert len(merged.agreed) == 620
    assert len(merged.anonymizer_only) == 35
    assert merged.innolitics_only == []
    assert merged.disagreements == []
    assert innolitics.skipped == ["(GGGG,EEEE) WHERE GGGG IS ODD Private Attributes"]


# --- content -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "action"),
    [
        ("(0010,0010)", "Z"),  # PatientName
        ("(0010,0030)", "Z"),  # PatientBirthDate
        ("(0008,0050)", "Z"),  # AccessionNumber
        ("(0008,0018)", "U"),  # SOPInstanceUID
        ("(0008,1140)", "X/Z/U*"),  # ReferencedImageSequence
        ("(0008,0020)", "Z"),  # StudyDate
        ("(0008,0022)", "X/Z"),  # AcquisitionDate
        ("(0008,002A)", "X/Z/D"),  # AcquisitionDateTime
        ("(0018,1400)", "X/D"),  # AcquisitionDeviceProcessingDescription
        ("(0018,11BB)", "D"),  # AcquisitionFieldOfViewLabel
        ("(0018,4000)", "X"),  # AcquisitionComments: "C" under Clean Descriptors, X in the profile
    ],
)
def test_rows_both_sources_agree_on(gen: ModuleType, shipped: dict[str, str], tag: str, action: str) -> None:
    assert gen.innolitics_rows().rows[tag] == action
    assert gen.anonymizer_rows(TABLE_EDITION)[tag] == action
    assert shipped[tag] == action


@pytest.mark.parametrize(
    ("tag", "action"),
    [
        ("(0010,2161)", "X"),  # EthnicGroupCodeSequence
        ("(0010,2162)", "X"),  # Ethnic Groups
        ("(0010,0011)", "X"),  # Person Names to Use Sequence
        ("(0010,0041)", "X"),  # Gender Identity Sequence
        ("(0018,1010)", "X"),  # SecondaryCaptureDeviceID
        ("(0040,B020)", "X/D"),  # WaveformAnnotationSequence
        ("(0070,0006)", "D"),  # UnformattedTextValue
        ("(300A,0054)", "U"),  # TableTopPositionAlignmentUID
    ],
)
def test_rows_of_editions_after_2024b_come_from_dicom_anonymizer(
    gen: ModuleType, shipped: dict[str, str], tag: str, action: str
) -> None:
    assert tag not in gen.innolitics_rows().rows
    assert shipped[tag] == action


def test_repeating_groups_are_masked_and_private_row_is_skipped(
    gen: ModuleType, shipped: dict[str, str]
) -> None:
    innolitics = gen.innolitics_rows()
    for tag in ("(50xx,xxxx)", "(60xx,3000)", "(60xx,4000)"):
        assert innolitics.rows[tag] == "X"
        assert shipped[tag] == "X"
    assert not any("G" in tag.upper() for tag in shipped)
    exact, masked = deid.load_table()
    assert (0x6000, 0x3000, 0xFF00, 0xFFFF, "X") in masked
    assert (0x5000, 0x0000, 0xFF00, 0x0000, "X") in masked
    assert len(exact) + len(masked) == len(shipped)


# --- the merge rule ----------------------------------------------------------------------------


def test_strictness_order_puts_removal_before_kept_values(gen: ModuleType) -> None:
    order = list(gen.STRICTNESS)
    assert set(order) == ENGINE_CODES and len(order) == len(ENGINE_CODES)
    assert order[0] == "X"
    assert order[-2:] == ["X/Z/U*", "U"]
    with_x = [code for code in order if "X" in code and code != "X/Z/U*"]
    assert order[: len(with_x)] == with_x


@pytest.mark.parametrize(
    ("ours", "theirs", "written"),
    [
        ("U", "X", "X"),
        ("Z", "X/Z", "X/Z"),
        ("D", "Z", "Z"),
        ("X/Z/D", "X/D", "X/Z/D"),
        ("X/Z/U*", "U", "X/Z/U*"),
        ("X/Z/U*", "X/Z", "X/Z"),
        ("Z/D", "D", "Z/D"),
    ],
)
def test_a_disagreement_takes_the_stricter_action_either_way(
    gen: ModuleType, ours: str, theirs: str, written: str
) -> None:
    for a, b in ((ours, theirs), (theirs, ours)):
        merged = gen.merge({"(0008,0020)": a, "(0010,0010)": "Z"}, {"(0008,0020)": b, "(0020,000D)": "U"})
        assert merged.rows == {"(0008,0020)": written, "(0010,0010)": "Z", "(0020,000D)": "U"}
        assert merged.disagreements == [("(0008,0020)", a, b, written)]
        assert merged.anonymizer_only == ["(0010,0010)"]
        assert merged.innolitics_only == ["(0020,000D)"]
        assert merged.agreed == []


def test_innolitics_codes_and_tags_are_read_into_our_notation(gen: ModuleType, tmp_path: Path) -> None:
    path = _write_innolitics(
        tmp_path / "inno.json",
        [
            {"name": "Cleaned", "tag": "(0008,1030)", "basicProfile": "C"},
            {"name": "Masked", "tag": "(60XX,4000)", "basicProfile": "X"},
            {"name": "Hex digits stay", "tag": "(300a,00B2)", "basicProfile": "X/Z/U*"},
            {"name": "Private Attributes", "tag": "(GGGG,EEEE) WHERE GGGG IS ODD", "basicProfile": "X"},
        ],
    )
    table = gen.innolitics_rows(path)
    assert table.rows == {"(0008,1030)": "X", "(60xx,4000)": "X", "(300A,00B2)": "X/Z/U*"}
    assert table.names["(0008,1030)"] == "Cleaned"
    assert table.skipped == ["(GGGG,EEEE) WHERE GGGG IS ODD Private Attributes"]


def test_unknown_innolitics_code_stops_the_script(gen: ModuleType, tmp_path: Path) -> None:
    path = _write_innolitics(
        tmp_path / "inno.json", [{"name": "Kept", "tag": "(0008,0070)", "basicProfile": "K"}]
    )
    with pytest.raises(SystemExit, match=r"\(0008,0070\).*'K'"):
        gen.innolitics_rows(path)


def test_a_source_listing_one_tag_twice_with_two_actions_stops_the_script(
    gen: ModuleType, tmp_path: Path
) -> None:
    path = _write_innolitics(
        tmp_path / "inno.json",
        [
            {"name": "A", "tag": "(0010,0010)", "basicProfile": "Z"},
            {"name": "A", "tag": "(0010,0010)", "basicProfile": "X"},
        ],
    )
    with pytest.raises(SystemExit, match=r"innolitics: \(0010,0010\) is listed as both Z and X"):
        gen.innolitics_rows(path)


def test_dicom_anonymizer_listing_one_tag_twice_stops_the_script(
    gen: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = ModuleType("dicomanonymizer.dicom_anonymization_databases.dicomfields_fake")
    for name in gen.LISTS:
        setattr(fake, name, [])
    fake.Z_TAGS = [(0x0010, 0x0010)]
    fake.X_TAGS = [(0x0010, 0x0010)]
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    with pytest.raises(SystemExit, match=r"dicom-anonymizer fake: \(0010,0010\) is listed as both Z and X"):
        gen.anonymizer_rows("fake")


def test_summary_names_the_sources_and_counts(gen: ModuleType) -> None:
    text = gen.summary(TABLE_EDITION)
    assert "DICOM 2024b" in text and f"dicom-anonymizer {TABLE_EDITION}" in text
    assert "620 in both with the same action, 35 from dicom-anonymizer only" in text
    assert "(300A,0054) U" in text and "TableTopPositionAlignmentUID" in text
    assert "(GGGG,EEEE) WHERE GGGG IS ODD" in text
