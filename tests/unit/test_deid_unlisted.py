"""What Table E.1-1 does not list is judged by its VR: over pydicom's whole data dictionary."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from niffler.common.deid import (
    MAX_SEQUENCE_DEPTH,
    SAFE_TEXT,
    DeidSettings,
    Policy,
    deidentify_dataset,
    deidentify_to_dict,
    load_table,
    phi_check,
)
from niffler.common.errors import DeidError

KEY = b"unit-test-secret-0123456789abcdef"
MARK = "QZJ"
LOCAL_ROOT = "1.2.826.0.1.3680043.10.4711."
TEXT_VRS = ("LO", "SH", "ST", "LT", "UT", "UC", "AE", "UR")


def dictionary(vrs: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(tag, VR, keyword) of every dictionary attribute with one of *vrs*, retired ones included."""
    return sorted((tag, entry[0], entry[4]) for tag, entry in DicomDictionary.items() if entry[0] in vrs)


def marked(vr: str, n: int) -> str:
    if vr == "PN":
        return f"{MARK}{n:05d}^GIVEN"
    if vr == "UR":
        return f"http://{MARK.lower()}{n:05d}.example/"
    if vr == "UI":
        return f"{LOCAL_ROOT}{n}"
    return f"{MARK}{n:05d}"


def dataset_of(entries: list[tuple[int, str, str]]) -> Dataset:
    ds = Dataset()
    for n, (tag, vr, _) in enumerate(entries):
        ds.add_new(tag, vr, marked(vr, n))
    return ds


def nested(ds: Dataset, depth: int) -> Dataset:
    """*ds* placed *depth* levels down in a sequence the policy keeps (AnatomicRegionSequence)."""
    for _ in range(depth):
        outer = Dataset()
        outer.AnatomicRegionSequence = Sequence([ds])
        ds = outer
    return ds


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy(DeidSettings(), KEY)


@pytest.mark.parametrize("depth", [0, 3])
def test_every_person_name_is_removed(policy: Policy, depth: int) -> None:
    entries = dictionary(("PN",))
    assert len(entries) == 32
    record = deidentify_to_dict(nested(dataset_of(entries), depth), policy)
    assert MARK not in json.dumps(record.values)
    assert phi_check(record.values, policy) == []


@pytest.mark.parametrize("depth", [0, 3])
def test_every_local_uid_is_replaced(policy: Policy, depth: int) -> None:
    entries = [e for e in dictionary(("UI",)) if not policy.rule(e[0]).source.startswith("Retain")]
    assert len(entries) > 100  # RetainDeviceIdentity keeps DeviceUID and ManufacturerDeviceClassUID
    record = deidentify_to_dict(nested(dataset_of(entries), depth), policy)
    uids = {k: v for k, v in record.values.items() if isinstance(v, str) and v[:1].isdigit()}
    assert LOCAL_ROOT not in json.dumps(record.values)
    # Every UI attribute survives only as a keyed UID (the table removes some outright).
    assert uids and all(v.startswith("2.25.") for v in uids.values())
    assert phi_check(record.values, policy) == []


@pytest.mark.parametrize("depth", [0, 3])
def test_every_unlisted_text_attribute_is_removed_unless_safe(policy: Policy, depth: int) -> None:
    exact, _ = load_table()
    entries = dictionary(TEXT_VRS)
    record = deidentify_to_dict(nested(dataset_of(entries), depth), policy)
    kept = {key.rsplit("_", 1)[-1] for key in record.values}
    unlisted = {kw for tag, _, kw in entries if tag not in exact}
    assert len(unlisted) > 300
    assert kept <= SAFE_TEXT | {kw for tag, _, kw in entries if tag in exact and policy.rule(tag).keeps_value}
    assert kept & unlisted == SAFE_TEXT & unlisted
    assert phi_check(record.values, policy) == []


def test_the_leaks_reported_in_issue_16_are_closed(policy: Policy) -> None:
    ds = Dataset()
    ds.PatientBirthDateInAlternativeCalendar = f"{MARK}19610203"
    ds.PatientDeathDateInAlternativeCalendar = f"{MARK}20990101"
    ds.EvaluatorName = f"{MARK}^EVAL"
    ds.PatientSpeciesDescription = f"{MARK}SPECIES"
    ds.CommentsOnTheScheduledProcedureStep = f"{MARK}COMMENT"
    ds.ReasonForCancellation = f"{MARK}REASON"
    region = Dataset()
    region.CodeValue = "T-D3000"
    region.CodingSchemeDesignator = "SRT"
    region.CodeMeaning = f"{MARK}MEANING"
    modifier = Dataset()
    modifier.CodeValue = "G-A101"
    modifier.CodeMeaning = f"{MARK}MODIFIER"
    modifier.TextValue = f"{MARK}TEXT"
    region.AnatomicRegionModifierSequence = Sequence([modifier])
    ds.AnatomicRegionSequence = Sequence([region])
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = f"{MARK}HOSPITAL"
    issuer.UniversalEntityID = f"{MARK}OID"
    ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    ds.OrderPlacerIdentifierSequence = Sequence([issuer])
    for keyword in ("CreatorVersionUID", "SOPInstanceUIDOfConcatenationSource",
                    "MultiFrameSourceSOPInstanceUID", "ReferencedColorPaletteInstanceUID",
                    "TargetFrameOfReferenceUID", "VolumeFrameOfReferenceUID"):  # fmt: skip
        setattr(ds, keyword, "1.2.840.99.0012345678.1")
    ds.add_new(0x60000022, "LO", f"{MARK}OVERLAY0")
    ds.add_new(0x60020022, "LO", f"{MARK}OVERLAY2")
    ds.add_new(0x60020500, "LO", f"{MARK}LABEL2")
    record = deidentify_to_dict(ds, policy)
    text = json.dumps(record.values)
    assert MARK not in text and "0012345678" not in text and "19610203" not in text
    # The coded parts of a kept code sequence stay; its free text does not.
    assert record.values["AnatomicRegionSequence_0_CodeValue"] == "T-D3000"
    assert record.values["AnatomicRegionSequence_0_AnatomicRegionModifierSequence_0_CodeValue"] == "G-A101"
    assert record.values["CreatorVersionUID"].startswith("2.25.")
    assert phi_check(record.values, policy) == []


def test_overlay_groups_get_distinct_keys(policy: Policy) -> None:
    ds = Dataset()
    ds.add_new(0x60000010, "US", 64)
    ds.add_new(0x60020010, "US", 128)
    record = deidentify_to_dict(ds, policy)
    assert record.values == {"60000010": 64, "60020010": 128}


def test_standard_uids_are_kept_and_lookalikes_are_not(policy: Policy) -> None:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.CodingSchemeUID = "1.2.840.10008.2.16.4"  # DCM
    ds.MappingResourceUID = "1.2.840.10008.99.0012345678"  # under the root, but no standard UID
    record = deidentify_to_dict(ds, policy)
    assert record.values["SOPClassUID"] == CTImageStorage
    assert record.values["TransferSyntaxUID"] == ExplicitVRLittleEndian
    assert record.values["CodingSchemeUID"] == "1.2.840.10008.2.16.4"
    assert record.values["MappingResourceUID"].startswith("2.25.")
    assert phi_check(record.values, policy) == []
    assert phi_check({"MappingResourceUID": "1.2.840.10008.99.0012345678"}, policy)


def test_options_govern_unlisted_uids_and_dates() -> None:
    ds = Dataset()
    ds.CreatorVersionUID = "1.2.840.99.1"
    ds.SecondaryReviewDate = "20200106"
    on = deidentify_to_dict(ds, Policy(DeidSettings(RetainUIDs=True), KEY)).values
    assert on == {"CreatorVersionUID": "1.2.840.99.1", "SecondaryReviewDate": "20200106"}
    off = deidentify_to_dict(ds, Policy(DeidSettings(RetainLongitudinalFullDates=False), KEY)).values
    assert off == {"CreatorVersionUID": Policy(DeidSettings(), KEY).pseudonymizer.uid("1.2.840.99.1")}


def test_overrides_still_keep_an_unlisted_attribute() -> None:
    ds = Dataset()
    ds.PatientSpeciesDescription = "canine"
    policy = Policy(DeidSettings(DeidOverrides={"PatientSpeciesDescription": "keep"}), KEY)
    assert deidentify_to_dict(ds, policy).values == {"PatientSpeciesDescription": "canine"}


def test_unknown_public_tags_are_removed(policy: Policy) -> None:
    ds = Dataset()
    ds.add_new(0x00091234 - 0x00010000, "LO", f"{MARK}UNKNOWN")  # (0008,1234): not in the dictionary
    ds.add_new(0x00190000 - 0x00010000 + 0x7777, "UN", MARK.encode())
    assert deidentify_to_dict(ds, policy).values == {}


@pytest.mark.parametrize("writer", ["dict", "dataset"])
def test_nesting_past_the_limit_is_refused_not_a_crash(policy: Policy, writer: str) -> None:
    leaf = Dataset()
    leaf.CodeValue = "X"
    ok: Any = nested(leaf, MAX_SEQUENCE_DEPTH - 1)
    deep: Any = nested(leaf, 1500)
    if writer == "dict":
        assert deidentify_to_dict(ok, policy).values
        with pytest.raises(DeidError, match="nested deeper"):
            deidentify_to_dict(deep, policy)
    else:
        deidentify_dataset(ok, policy)
        with pytest.raises(DeidError, match="nested deeper"):
            deidentify_dataset(deep, policy)


def test_the_hot_path_builds_no_audit_unless_asked(policy: Policy) -> None:
    ds = Dataset()
    ds.PatientName = "A^B"
    ds.EvaluatorName = "C^D"
    assert deidentify_to_dict(ds, policy).audit == []
    audit = deidentify_to_dict(ds, policy, audit=True).audit
    assert {(a.path, a.rule) for a in audit} == {
        ("PatientName", "E.1-1 Z"),
        ("EvaluatorName", "unlisted: person name"),
    }


def test_free_text_in_a_kept_date_time_or_age_is_dropped(policy: Policy) -> None:
    ds = Dataset()
    ds.AcquisitionDate = f"{MARK}GARBAGE"
    ds.ContentTime = f"{MARK}T"
    ds.AcquisitionDateTime = f"{MARK}DT"
    ds.StudyDate = "20200106"
    ds.StudyTime = "081500.25"
    ds.SeriesTime = "08:15:00"
    ds.AcquisitionTime = "0815"
    ds.InstanceCreationDate = "2020.01.06"
    ds.FrameReferenceDateTime = "20200106081500.123456+0100"
    assert deidentify_to_dict(ds, policy).values == {
        "StudyDate": "20200106", "StudyTime": "081500.25", "SeriesTime": "08:15:00",
        "AcquisitionTime": "0815", "InstanceCreationDate": "2020.01.06",
        "FrameReferenceDateTime": "20200106081500.123456+0100",
    }  # fmt: skip


def test_a_featureset_line_selects_each_overlay_group_by_its_tag(policy: Policy) -> None:
    from niffler.common.featureset import parse_line

    ds = Dataset()
    ds.add_new(0x60000010, "US", 64)
    ds.add_new(0x60020010, "US", 128)
    keys = [parse_line("0x60000010"), parse_line("(6002,0010)")]
    assert keys == ["60000010", "60020010"]
    values = deidentify_to_dict(ds, policy).values
    assert {k: values[k] for k in keys if k} == {"60000010": 64, "60020010": 128}
