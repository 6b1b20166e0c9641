"""Path templates: the upstream default renders, hostile values never escape the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from niffler.common.atomic import NAME_MAX, atomic_write, temp_name
from niffler.common.errors import TemplateError
from niffler.common.filepath import (
    DEFAULT_FILE_PATH,
    MAX_COMPONENT,
    FileTemplate,
    fit_component,
    safe_component,
)


def dataset(patient_id: object = "000123") -> Dataset:
    ds = Dataset()
    ds.PatientID = patient_id
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.Modality = "CT"
    return ds


def test_default_template_renders_upstream_layout(tmp_path: Path) -> None:
    path = FileTemplate.parse(DEFAULT_FILE_PATH).path_in(tmp_path, dataset())
    assert path == tmp_path / "000123" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"


def test_keywords_and_literals_mix() -> None:
    rendered = FileTemplate.parse("{Modality}-x/{PatientID}_{0020000D}.dcm").render(dataset())
    assert str(rendered) == "CT-x/000123_1.2.3.dcm"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("../../etc", "_._.._etc"),
        ("..", "_."),
        (".", "_"),
        ("/etc/passwd", "_etc_passwd"),
        ("a\\b", "a_b"),
        ("x\x00y\nz", "x_y_z"),
        ("", "UNKNOWN"),
        (None, "UNKNOWN"),
        ("   ", "UNKNOWN"),
        ("$(rm -rf ~);`id`", "__rm_-rf_____id_"),
        ("DOE^JOHN", "DOE^JOHN"),
        (["A", "B"], "A_B"),
    ],
)
def test_hostile_values_become_one_safe_component(value: object, expected: str) -> None:
    assert safe_component(value) == expected


def test_long_values_are_shortened_but_stay_distinct() -> None:
    a, b = safe_component("A" * 300 + "1"), safe_component("A" * 300 + "2")
    assert len(a) == MAX_COMPONENT and len(b) == MAX_COMPONENT and a != b


@pytest.mark.parametrize("pid", ["../../etc", "../../../../../../tmp/x", "/", "..", "a/../../b"])
def test_hostile_patient_id_stays_inside_storage_folder(tmp_path: Path, pid: str) -> None:
    root = tmp_path / "store"
    path = FileTemplate.parse(DEFAULT_FILE_PATH).path_in(root, dataset(pid))
    assert os.path.commonpath([root, path]) == str(root)
    assert path.relative_to(root).parts[0] not in ("..", ".")
    assert len(path.relative_to(root).parts) == 4


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_renders_inside_the_folder(value: str) -> None:
    root = Path("/srv/niffler")
    path = FileTemplate.parse(DEFAULT_FILE_PATH).path_in(root, dataset(value))
    rel = path.relative_to(root)
    assert len(rel.parts) == 4
    assert all(part not in ("", ".", "..") and len(part) <= MAX_COMPONENT + 4 for part in rel.parts)
    assert all(ch.isprintable() and ch not in "/\\" for part in rel.parts for ch in part)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "empty"),
        ("/abs/{00100020}", "relative"),
        ("../{00100020}", r"'\.' or '\.\.'"),
        ("{00100020}/../x", r"'\.' or '\.\.'"),
        ("{0010002}", "neither an 8-digit hex tag nor a DICOM keyword"),
        ("{NotAKeyword}", "neither"),
        ("{00100020", "unbalanced"),
        ("{PatientID}\x00.dcm", "control character"),
        ("{PatientID}/\n{SOPInstanceUID}.dcm", "control character"),
        ("x\x7f/{PatientID}", "control character"),
    ],
)
def test_malformed_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        FileTemplate.parse(template)


FLAT = "{PatientID}_{StudyInstanceUID}_{SeriesInstanceUID}_{SOPInstanceUID}.dcm"
LONGEST_UID = "1.2.826.0.1.3680043.8.498." + "1" * 38


def flat(patient_id: str, sop_uid: str = LONGEST_UID) -> Dataset:
    ds = dataset(patient_id)
    ds.StudyInstanceUID = ds.SeriesInstanceUID = LONGEST_UID
    ds.SOPInstanceUID = sop_uid
    return ds


def test_a_component_of_several_values_fits_in_255_bytes_and_stays_distinct() -> None:
    template = FileTemplate.parse(FLAT)
    short = template.render(flat("P" * 40, LONGEST_UID[:60]))
    assert str(short) == "_".join(["P" * 40, LONGEST_UID, LONGEST_UID, LONGEST_UID[:60]]) + ".dcm"
    assert len(str(short).encode()) <= NAME_MAX  # a name that fits is kept as it is
    long_a = str(template.render(flat("P" * 64)))
    long_b = str(template.render(flat("P" * 64, LONGEST_UID[:-1] + "2")))  # differs in its last digit
    for name in (long_a, long_b):
        assert len(name.encode()) == NAME_MAX and name.startswith("P" * 64 + "_") and name.endswith(".dcm")
    assert long_a != long_b


def test_fit_component_counts_bytes_and_never_cuts_a_character() -> None:
    name = "\u00e9" * 200 + ".dcm"  # 404 bytes of UTF-8
    fitted = fit_component(name)
    assert len(fitted.encode()) <= NAME_MAX and fitted.endswith(".dcm") and fitted.startswith("\u00e9")
    assert fit_component("x" * NAME_MAX) == "x" * NAME_MAX
    assert fit_component("x" * (NAME_MAX + 1)) != fit_component("x" * (NAME_MAX + 2))


def test_a_literal_component_is_capped_too() -> None:
    rendered = FileTemplate.parse("\u6f22" * 100 + "/{PatientID}.dcm").render(dataset())
    assert all(len(part.encode()) <= NAME_MAX for part in rendered.parts)
    assert rendered.parts[1] == "000123.dcm"


@pytest.mark.parametrize("name", ["x" * NAME_MAX, "\u00e9" * 127 + "x", "short.dcm", "\U0001f600" * 63])
def test_the_temp_name_of_any_name_that_fits_fits_too(tmp_path: Path, name: str) -> None:
    temp = temp_name(name)
    assert len(os.fsencode(temp)) <= NAME_MAX and temp.startswith(".") and temp.endswith(".part")
    assert temp.encode("utf-8")  # no character cut in two
    assert temp.startswith("." + name[:8]) and temp != temp_name(name)
    target = tmp_path / name
    with atomic_write(target, "wb", temp_dir=tmp_path / "incoming") as handle:
        handle.write(b"DICM")
    assert target.read_bytes() == b"DICM"
