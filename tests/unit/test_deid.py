"""The de-identification engine: Table E.1-1, options, overrides, keyed pseudonyms, secrets."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from niffler.common.deid import (
    KEY_ENV,
    OPTION_ATTRIBUTES,
    OPTION_CODES,
    DeidSettings,
    Policy,
    Pseudonymizer,
    deidentify_dataset,
    deidentify_to_dict,
    load_secret,
    load_table,
    phi_check,
)
from niffler.common.errors import ConfigError

KEY = b"unit-test-secret-0123456789abcdef"
ALL_OFF = DeidSettings(RetainLongitudinalFullDates=False, RetainDeviceIdentity=False)
MARK = "PHIX"
SENTINEL_DATE = "19230417"
SENTINEL_TIME = "171819"
UID_ROOT = "1.2.826.0.1.3680043.10.999."

# A value pydicom can create, valid for its VR, carrying a findable marker where the VR allows text.
_TEXT_VRS = {"LO": 64, "SH": 16, "LT": 200, "ST": 200, "UT": 200, "UC": 200, "PN": 64, "CS": 16, "AE": 16}
_NUMBER_VRS = {"US": 7, "SS": 7, "UL": 7, "SL": 7, "FL": 7.5, "FD": 7.5, "UV": 7, "SV": 7}


def valid_value(vr: str, n: int) -> Any:
    """A valid value of *vr* that names attribute number *n*; None when pydicom can't make one."""
    if vr in _TEXT_VRS:
        text = f"{MARK}{n:04d}"
        return f"{text}^GIVEN" if vr == "PN" else text
    return {
        "DA": SENTINEL_DATE,
        "TM": SENTINEL_TIME,
        "DT": SENTINEL_DATE + SENTINEL_TIME,
        "AS": "045Y",
        "IS": "42",
        "DS": "4.2",
        "UI": f"{UID_ROOT}{n}",
        "UR": f"http://{MARK.lower()}{n}.example/",
        "OB": f"{MARK}{n:04d}".encode(),
        "OW": f"{MARK}{n:04d}".encode(),
        "UN": f"{MARK}{n:04d}".encode(),
        "AT": 0x00100010,
    }.get(vr, _NUMBER_VRS.get(vr))


def table_tags() -> list[int]:
    exact, _ = load_table()
    return sorted(exact)


def make_element(ds: Dataset, tag: int, n: int, depth: int = 0) -> None:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return
    if vr == "SQ":
        if depth > 0:
            return
        item = Dataset()
        item.PatientName = f"{MARK}{n:04d}^NESTED"
        item.AccessionNumber = f"{MARK}A{n:04d}"
        item.ReferencedSOPInstanceUID = f"{UID_ROOT}9{n}"
        item.add_new(0x00090010, "LO", "ACME PRIVATE")
        item.add_new(0x00091001, "LO", f"{MARK}P{n:04d}")
        ds.add_new(tag, "SQ", [item])
        return
    value = valid_value(vr, n)
    if value is not None:
        ds.add_new(tag, vr, value)


def full_dataset(tags: list[int] | None = None) -> Dataset:
    """A dataset carrying every Table E.1-1 attribute pydicom can create (or the given ones)."""
    ds = Dataset()
    for n, tag in enumerate(tags if tags is not None else table_tags()):
        if tag >> 16 in (0x0000, 0x0002):
            continue  # command and file-meta groups do not belong in a dataset
        make_element(ds, tag, n)
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.add_new(0x00190010, "LO", "ACME PRIVATE")
    ds.add_new(0x00191001, "LO", f"{MARK}PRIVATE")
    ds.add_new(0x00191002, "DS", "1.5")
    return ds


def write_bytes(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = str(ds.get("SOPInstanceUID", "1.2.3"))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- the table -----------------------------------------------------------------------------------


def test_table_has_the_attributes_the_policy_names() -> None:
    exact, masked = load_table()
    assert len(exact) > 600
    assert exact[0x00100010] == "Z"  # PatientName
    assert exact[0x00100030] == "Z"  # PatientBirthDate
    assert exact[0x0020000D] == "U"  # StudyInstanceUID
    assert exact[0x00081140] == "X/Z/U*"  # ReferencedImageSequence
    assert any(g == 0x5000 for g, *_ in masked)  # curve data, a repeating group
    for option, keywords in OPTION_ATTRIBUTES.items():
        for keyword in keywords:
            tag = tag_for_keyword(keyword)
            assert tag is not None, f"{option}: {keyword} is not a DICOM keyword"
            assert tag in exact, f"{option}: {keyword} is not in Table E.1-1"


# --- the whole table at once ------------------------------------------------------------------


def test_every_table_attribute_is_removed_or_replaced_in_the_flat_record() -> None:
    ds = full_dataset()
    record = deidentify_to_dict(ds, Policy(ALL_OFF, KEY))
    assert phi_check(record.values, Policy(ALL_OFF, KEY)) == []
    dumped = json.dumps(record.values)
    assert MARK not in dumped and MARK.lower() not in dumped
    assert SENTINEL_DATE not in dumped and SENTINEL_TIME not in dumped
    assert UID_ROOT not in dumped
    gone = ("PatientName", "PatientBirthDate", "PatientAddress", "OtherPatientIDs", "PatientTelephoneNumbers",
            "ReferringPhysicianName", "ImageComments", "StudyDescription", "PatientComments",
            "InstitutionName", "DeviceSerialNumber")  # fmt: skip
    for keyword in gone:
        assert keyword in ds, keyword  # the dataset had it ...
        assert keyword not in record.values, keyword  # ... the record does not
    assert record.values["Modality"] == "CT"
    assert re.fullmatch(r"[0-9A-F]{16}", record.values["PatientID"])
    assert record.values["StudyInstanceUID"].startswith("2.25.")


def test_every_table_attribute_is_removed_or_replaced_in_written_dicom() -> None:
    ds = full_dataset()
    policy = Policy(ALL_OFF, KEY)
    audit = deidentify_dataset(ds, policy)
    data = write_bytes(ds)
    assert MARK.encode() not in data and MARK.lower().encode() not in data
    assert SENTINEL_DATE.encode() not in data and UID_ROOT.encode() not in data
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.PatientIdentityRemoved == "YES"
    assert not back.PatientName
    assert [item.CodeValue for item in back.DeidentificationMethodCodeSequence] == ["113100"]
    assert back.LongitudinalTemporalInformationModified == "REMOVED"
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.SOPInstanceUID.startswith("2.25.")
    # The audit names what was done and why, never a value.
    assert any(a.path == "PatientName" and a.action == "empty" for a in audit)
    assert not any(MARK in json.dumps(dataclasses.asdict(a)) for a in audit)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tags=st.lists(st.sampled_from(table_tags()), min_size=1, max_size=40, unique=True),
    switches=st.fixed_dictionaries({name: st.booleans() for name in OPTION_CODES}),
)
def test_phi_check_finds_nothing_whatever_the_attributes_and_options(
    tags: list[int], switches: dict[str, bool]
) -> None:
    policy = Policy(DeidSettings(**switches), KEY)
    ds = full_dataset(tags)
    record = deidentify_to_dict(ds, policy)
    assert phi_check(record.values, policy) == []
    deidentify_dataset(ds, policy)
    flat_after = deidentify_to_dict(ds, Policy(DeidSettings(**switches), KEY))
    assert phi_check(flat_after.values, policy) == []
    # Names and free text are removed by every combination of options.
    dumped = json.dumps(record.values)
    assert "GIVEN" not in dumped and "NESTED" not in dumped


# --- nested sequences --------------------------------------------------------------------------


def test_nested_sequences_are_walked_not_skipped() -> None:
    ds = Dataset()
    ds.PatientID = "0001234"
    ds.AccessionNumber = "ACC0001"
    request = Dataset()
    request.AccessionNumber = "ACC0001"
    request.RequestedProcedureID = "RP-SECRET"
    ds.RequestAttributesSequence = [request]  # X: goes with everything inside
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    ds.ReferencedStudySequence = [study_ref]  # X/Z: absent from records, emptied in DICOM
    image_ref = Dataset()
    image_ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    image_ref.ReferencedSOPInstanceUID = "1.2.3.4.5.7"
    ds.ReferencedImageSequence = [image_ref]  # X/Z/U*: kept, its UIDs replaced
    region = Dataset()  # not in the table: walked, and the rules apply inside
    region.CodeValue = "T-D3000"
    region.CodeMeaning = "Chest"
    region.AccessionNumber = "ACC0001"
    nested = Dataset()
    nested.PatientName = "DOE^JANE"
    nested.CodeValue = "R-42"
    region.AnatomicRegionModifierSequence = [nested]
    ds.AnatomicRegionSequence = [region]

    policy = Policy(DeidSettings(), KEY)
    values = deidentify_to_dict(ds, policy).values
    pseudo_acc = values["AccessionNumber"]
    assert values["AnatomicRegionSequence_0_AccessionNumber"] == pseudo_acc
    assert values["AnatomicRegionSequence_0_CodeValue"] == "T-D3000"
    assert values["AnatomicRegionSequence_0_AnatomicRegionModifierSequence_0_CodeValue"] == "R-42"
    assert "AnatomicRegionSequence_0_AnatomicRegionModifierSequence_0_PatientName" not in values
    image_uid = policy.pseudonymizer.uid("1.2.3.4.5.7")
    assert values["ReferencedImageSequence_0_ReferencedSOPInstanceUID"] == image_uid
    assert values["ReferencedImageSequence_0_ReferencedSOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    assert not any(k.startswith(("RequestAttributesSequence", "ReferencedStudySequence")) for k in values)
    dumped = json.dumps(values)
    assert "0001234" not in dumped and "SECRET" not in dumped and "DOE" not in dumped
    assert "ACC0001" not in dumped and "1.2.3.4.5" not in dumped
    assert phi_check(values, policy) == []

    deidentify_dataset(ds, policy)
    assert "RequestAttributesSequence" not in ds
    assert len(ds.ReferencedStudySequence) == 0
    assert ds.AnatomicRegionSequence[0].AccessionNumber == pseudo_acc
    assert not ds.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].PatientName
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == policy.pseudonymizer.uid("1.2.3.4.5.7")


def test_flat_values_are_typed_for_querying() -> None:
    ds = Dataset()
    ds.SeriesNumber = "7"
    ds.SliceThickness = "1.25"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.Rows = 512
    ds.StudyDate = "20240105"
    ds.add_new(0x00280108, "US", 5)  # SmallestPixelValueInSeries (binary-ambiguous VR resolved)
    ds.add_new(0x7FE00010, "OW", b"\x00\x01" * 4)  # pixel data: binary, dropped
    values = deidentify_to_dict(ds, Policy(DeidSettings(), KEY)).values
    assert values["SeriesNumber"] == 7 and isinstance(values["SeriesNumber"], int)
    assert values["SliceThickness"] == 1.25
    assert values["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert values["PixelSpacing"] == [0.5, 0.5]
    assert values["Rows"] == 512
    assert values["StudyDate"] == "20240105"
    assert "PixelData" not in values
    json.dumps(values)


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", sorted(OPTION_CODES))
def test_each_option_switches_exactly_its_attributes(option: str) -> None:
    """Switching one option on changes exactly the attributes its column in Table E.1-1 names."""
    ds = full_dataset()
    exact, _ = load_table()
    off = deidentify_to_dict(ds, Policy(ALL_OFF, KEY)).values
    on = deidentify_to_dict(ds, Policy(dataclasses.replace(ALL_OFF, **{option: True}), KEY)).values
    # A kept sequence shows as its flattened items, so compare by top-level attribute.
    changed = {k.split("_")[0] for k in off.keys() | on.keys() if off.get(k) != on.get(k)}
    assert off.keys() <= on.keys()

    def present(tags: Any) -> set[str]:
        return {str(keyword_for_tag(t)) for t in tags if t in ds}

    if option in OPTION_ATTRIBUTES:
        expected = {k for k in OPTION_ATTRIBUTES[option] if tag_for_keyword(k) in ds}
    elif option == "RetainLongitudinalFullDates":
        temporal = present(t for t in exact if t in ds and str(dictionary_VR(t)) in ("DA", "TM", "DT"))
        expected = temporal - {"PatientBirthDate", "PatientBirthTime"}
    elif option == "RetainUIDs":
        expected = present(t for t, code in exact.items() if code in ("U", "X/Z/U*"))
        assert on["StudyInstanceUID"] == ds.StudyInstanceUID != off["StudyInstanceUID"]
    else:  # RetainSafePrivate with no SafePrivateTags listed keeps nothing more
        expected = set()
    assert changed == expected


def test_default_options_keep_device_identity_and_real_dates_only() -> None:
    ds = full_dataset()
    policy = Policy(DeidSettings(), KEY)
    values = deidentify_to_dict(ds, policy).values
    assert values["DeviceSerialNumber"] == ds.DeviceSerialNumber
    assert values["StationName"] == ds.StationName
    assert values["AcquisitionDate"] == SENTINEL_DATE
    assert values["StudyTime"] == SENTINEL_TIME
    for removed in ("PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight", "InstitutionName"):
        assert removed not in values
    assert [code for code, _ in policy.method_codes()] == ["113100", "113106", "113109"]


def test_safe_private_keeps_only_listed_private_tags_and_their_creator() -> None:
    ds = full_dataset([])
    on = DeidSettings(RetainSafePrivate=True, SafePrivateTags=["0x00191002"])
    values = deidentify_to_dict(ds, Policy(on, KEY)).values
    assert values["00191002"] == 1.5
    assert values["00190010"] == "ACME PRIVATE"
    assert "00191001" not in values
    off = dataclasses.replace(on, RetainSafePrivate=False)
    assert not any(k.startswith("0019") for k in deidentify_to_dict(ds, Policy(off, KEY)).values)


def test_overrides_keep_remove_and_pseudonymize() -> None:
    ds = full_dataset([tag_for_keyword("StudyDescription"), tag_for_keyword("StudyID")])
    ds.Manufacturer = "ACME"
    ds.add_new(0x0051100F, "LO", "HEA;HEP")
    overrides = {"StudyDescription": "keep", "Manufacturer": "remove", "StudyID": "pseudonymize",
                 "0x0051100F": "keep"}  # fmt: skip
    policy = Policy(DeidSettings(DeidOverrides=overrides), KEY)
    record = deidentify_to_dict(ds, policy, audit=True)
    assert record.values["StudyDescription"] == ds.StudyDescription
    assert "Manufacturer" not in record.values
    assert re.fullmatch(r"[0-9A-F]{16}", record.values["StudyID"])
    assert record.values["0051100F"] == "HEA;HEP"
    assert phi_check(record.values, policy) == []
    assert any(a.path == "StudyDescription" and a.rule.startswith("override") for a in record.audit)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"PatientNmae": "keep"}, "PatientNmae"), ({"PatientName": "hash"}, "hash")],
)
def test_bad_overrides_fail_naming_the_key(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DeidSettings(DeidOverrides=overrides)


def test_phi_check_names_forbidden_keys_and_raw_identifiers() -> None:
    policy = Policy(DeidSettings(), KEY)
    row = {
        "PatientName": "DOE^JOHN",
        "ReferencedStudySequence_0_AccessionNumber": "A123",
        "StudyInstanceUID": "1.2.3",
        "PatientID": "0001234",
        "Modality": "CT",
        "received_at": "2024-01-01T00:00:00Z",
        "00191001": "private",
    }
    problems = phi_check(row, policy)
    flagged = {p.split(":")[0] for p in problems}
    assert flagged == {
        "PatientName",
        "ReferencedStudySequence_0_AccessionNumber",
        "StudyInstanceUID",
        "PatientID",
        "00191001",
    }


# --- pseudonyms ---------------------------------------------------------------------------------


@given(value=st.text(min_size=1, max_size=64).filter(lambda s: s.strip()))
def test_pseudonyms_are_stable_keyed_and_well_formed(value: str) -> None:
    one, same, other = Pseudonymizer(KEY), Pseudonymizer(KEY), Pseudonymizer(KEY + b"-other")
    uid = one.uid(value)
    assert uid == same.uid(value) != other.uid(value)
    assert len(uid) <= 64 and re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid)
    ident = one.identifier("PatientID", value)
    assert ident == same.identifier("PatientID", value) != other.identifier("PatientID", value)
    assert re.fullmatch(r"[0-9A-F]{16}", ident)


def test_pseudonyms_are_fixed_across_machines() -> None:
    """Known answers: the same input and secret give these values on any machine and run."""
    p = Pseudonymizer(KEY)
    assert p.identifier("PatientID", "0001234") == p.identifier("PatientID", "0001234 ")
    # HMAC-SHA256(secret, "<keyword>\\0<value>"), first 8 bytes in hex; UIDs: "uid\\0<value>", 16 bytes.
    assert p.identifier("PatientID", "0001234") == "FB7A9E9ECB9B331F"
    assert p.uid("1.2.3.4") == "2.25.154432184337843814799283165787413241883"


def test_identifier_namespaces_differ_but_uids_share_one() -> None:
    p = Pseudonymizer(KEY)
    assert p.identifier("PatientID", "123") != p.identifier("AccessionNumber", "123")


# --- the secret ---------------------------------------------------------------------------------


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(KEY_ENV, "environment-secret-value")
    assert load_secret(None, tmp_path) == b"environment-secret-value"
    assert not (tmp_path / "deid.key").exists()
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigError, match=KEY_ENV):
        load_secret(None, tmp_path)


def test_secret_from_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    key_file = tmp_path / "site.key"
    key_file.write_text("file-secret-value-0123\n")
    assert load_secret(str(key_file), tmp_path / "state") == b"file-secret-value-0123"
    with pytest.raises(ConfigError, match=r"missing\.key"):
        load_secret(str(tmp_path / "missing.key"), tmp_path)


def test_secret_generated_once_with_mode_0600_and_never_logged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    state = tmp_path / "state"
    with caplog.at_level(logging.INFO, logger="niffler.common.deid"):
        first = load_secret(None, state)
        second = load_secret(None, state)
    path = state / "deid.key"
    assert first == second and len(first) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert str(path) in caplog.text
    assert first.decode() not in caplog.text
    assert list(state.iterdir()) == [path]  # no temp files left behind
