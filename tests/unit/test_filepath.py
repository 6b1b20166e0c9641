"""Path templates: the upstream default renders, hostile values never escape the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from niffler.common.errors import TemplateError
from niffler.common.filepath import DEFAULT_FILE_PATH, MAX_COMPONENT, FileTemplate, safe_component


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
    ],
)
def test_malformed_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        FileTemplate.parse(template)
