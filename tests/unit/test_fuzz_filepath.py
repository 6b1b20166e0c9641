"""Fuzzing the FilePath template: any values render a usable path inside the storage folder.

Properties:

- for arbitrary tag values (any Unicode, ``..``, separators, NUL, very long, empty, bytes, numbers,
  lists), the path :meth:`FileTemplate.path_in` returns is inside the base folder, its relative
  part is a valid relative path with no ``.``, ``..`` or empty component and no NUL, each
  component fits the filesystem's 255 bytes, and it is what :meth:`FileTemplate.render` gives;
- arbitrary template strings either parse or raise TemplateError / ConfigError, never another
  exception; a parsed template renders a usable path for any values, or path_in raises
  TemplateError.

Run: ``.venv/bin/python -m pytest tests/unit/test_fuzz_filepath.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from niffler.common.errors import ConfigError, TemplateError
from niffler.common.filepath import DEFAULT_FILE_PATH, FileTemplate

RUNS: Counter[str] = Counter()
_SETTINGS: dict[str, Any] = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
BASE = Path("/srv/niffler/store")
#: Most filesystems' limit on one path component (NAME_MAX).
NAME_MAX = 255

KEYWORDS = [
    "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "PatientName",
    "StudyDate", "StudyTime", "InstanceNumber", "AccessionNumber", "SeriesDescription", "PixelSpacing",
    "ImageType", "Rows", "SliceThickness", "InstitutionName",
]  # fmt: skip
HEX_TAGS = ["00100020", "0020000D", "0020000e", "00080018", "00080060", "7FE00010", "00091010", "FFFEE000"]
#: Templates an operator writes: one value per folder level.
HIERARCHICAL = [
    DEFAULT_FILE_PATH,
    "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
    "{Modality}/{PatientName}/{StudyDate}/{InstanceNumber}.dcm",
    "data/{AccessionNumber}/{SeriesDescription}/{SOPInstanceUID}",
    ".hidden/{ImageType}/{PixelSpacing}/{00080018}.dcm",
]
#: Templates that put several values in one component (a flat layout).
FLAT = [
    "{PatientID}_{StudyInstanceUID}_{SeriesInstanceUID}_{SOPInstanceUID}.dcm",
    "{PatientID}/{StudyInstanceUID}-{SeriesInstanceUID}-{SOPInstanceUID}.dcm",
    "{StudyDate}{StudyTime}{Modality}{PatientName}{PatientID}/{SOPInstanceUID}.dcm",
]

_HOSTILE = [
    "", " ", "\t", ".", "..", "...", "/", "\\", "../..", "../../etc/passwd", "a/../../b", "C:\\Windows",
    "\x00", "a\x00b", "~", "-rf", "\u3000", "\u202e", "\ufffd", "\U0001f600" * 3, "NUL", "con", "*", "?",
]  # fmt: skip


def _text(alphabet: st.SearchStrategy[str] | None = None, max_size: int = 80) -> st.SearchStrategy[str]:
    return st.text(alphabet if alphabet is not None else st.characters(), max_size=max_size)


#: A tag value as pydicom or a mapping can hold it: text of any kind, bytes, numbers, lists, None.
values = st.one_of(
    st.none(),
    st.sampled_from(_HOSTILE),
    _text(),
    _text(st.sampled_from(list("./\\\x00 ._-"))),
    st.builds(
        lambda char, n: char * n,
        st.sampled_from(["a", ".", "/", "\u00e9", "\u6f22", "\U0001f600"]),
        st.integers(60, 3000),
    ),
    st.binary(max_size=80),
    st.integers(),
    st.floats(),
    st.lists(_text(max_size=20), max_size=5),
    st.builds(lambda items: MultiValue(str, items), st.lists(_text(max_size=70), max_size=4)),
)


@st.composite
def value_maps(draw: st.DrawFn, template: FileTemplate) -> dict[Any, Any]:
    """Values for the template's tags (some absent), keyed by pydicom Tag like a Dataset."""
    out: dict[Any, Any] = {}
    longest = draw(st.integers(0, 4)) == 0  # every value as long as its VR allows (64 for LO and UI)
    for tag in template.tags:
        if longest:
            out[Tag(tag)] = draw(st.text(st.sampled_from("0123456789."), min_size=64, max_size=64))
        elif draw(st.integers(0, 9)):
            out[Tag(tag)] = draw(values)
    return out


@st.composite
def generated_templates(draw: st.DrawFn) -> str:
    """A well-formed template: components of literals and placeholders (several per component)."""
    piece = st.one_of(
        st.sampled_from(KEYWORDS).map(lambda k: "{" + k + "}"),
        st.sampled_from(HEX_TAGS).map(lambda t: "{" + t + "}"),
        st.text(st.sampled_from(list("abcXYZ019._-")), min_size=1, max_size=8),
    )
    components = draw(st.lists(st.lists(piece, min_size=1, max_size=5).map("".join), min_size=1, max_size=5))
    assume(all(c not in (".", "..") for c in components))
    return "/".join(components)


def _assert_usable(template: FileTemplate, mapping: dict[Any, Any]) -> None:
    try:
        path = template.path_in(BASE, mapping)
    except TemplateError:
        return  # refused: the one documented error
    assert path.is_absolute() and os.path.commonpath([BASE, path]) == str(BASE) and path != BASE
    rel = path.relative_to(BASE)
    assert rel.parts and not rel.is_absolute()
    assert PurePosixPath(*rel.parts) == template.render(mapping)
    for part in rel.parts:
        assert part not in ("", ".", ".."), rel
        assert "\x00" not in part, f"a NUL in component {part!r}"
        assert "/" not in part and "\\" not in part, part
        size = len(os.fsencode(part))
        assert size <= NAME_MAX, f"component of {size} bytes > {NAME_MAX}: {part[:40]!r}..."


def cases(texts: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, dict[Any, Any]]]:
    """(template text, values for its tags) for templates that parse."""

    def with_values(text: str) -> st.SearchStrategy[tuple[str, dict[Any, Any]]]:
        try:
            template = FileTemplate.parse(text)
        except (TemplateError, ConfigError):
            return st.just((text, {}))
        return st.tuples(st.just(text), value_maps(template))

    return texts.flatmap(with_values)


#: The longest legal values of the four identifiers: a 64-character LO and three 64-character UIDs.
_LONGEST_UID = "1.2.826.0.1.3680043.8.498." + "1" * 38
_LONGEST = {Tag(0x00100020): "P" * 64, Tag(0x0020000D): _LONGEST_UID, Tag(0x0020000E): _LONGEST_UID,
            Tag(0x00080018): _LONGEST_UID}  # fmt: skip


@settings(max_examples=400, **_SETTINGS)
@given(case=cases(st.sampled_from(HIERARCHICAL)))
def test_any_values_render_a_safe_path_inside_the_folder(case: tuple[str, dict[Any, Any]]) -> None:
    """Templates with one value per folder level: any values give a safe, valid path."""
    RUNS["path template: hierarchical, any values"] += 1
    text, mapping = case
    _assert_usable(FileTemplate.parse(text), mapping)


@settings(max_examples=300, **_SETTINGS)
@given(case=cases(st.one_of(st.sampled_from(FLAT), generated_templates())))
# Found by this test: each value is cut to 64 characters, but a component holding several is not.
@example(case=(FLAT[0], _LONGEST))
def test_any_values_fit_the_filesystem_whatever_the_template(case: tuple[str, dict[Any, Any]]) -> None:
    """Templates with several values per component: every component still fits in 255 bytes."""
    RUNS["path template: any template, any values"] += 1
    text, mapping = case
    _assert_usable(FileTemplate.parse(text), mapping)


_TEMPLATE_ALPHABET = st.one_of(
    st.sampled_from(["{", "}", "/", "\\", ".", "..", ":", " ", "\x00", "C:", "{}", "{ }", "x"]),
    st.sampled_from(KEYWORDS + HEX_TAGS + ["NotAKeyword", "0010002", "0x00100020"]),
    st.characters(),
)
template_strings = st.one_of(
    st.lists(_TEMPLATE_ALPHABET, max_size=14).map("".join),
    generated_templates(),
    st.text(max_size=40),
)


@settings(max_examples=500, **_SETTINGS)
@given(text=template_strings)
def test_any_template_string_parses_or_is_refused(text: str) -> None:
    RUNS["path template: parse any string"] += 1
    try:
        FileTemplate.parse(text)
    except (TemplateError, ConfigError) as exc:
        assert str(exc)


@settings(max_examples=300, **_SETTINGS)
@given(case=cases(template_strings))
# Found by this test: a template may hold a NUL, which no path can.
@example(case=("{PatientID}\x00.dcm", {}))
def test_a_parsed_template_renders_a_usable_path_or_is_refused(case: tuple[str, dict[Any, Any]]) -> None:
    RUNS["path template: any string, any values"] += 1
    text, mapping = case
    try:
        template = FileTemplate.parse(text)
    except (TemplateError, ConfigError):
        return
    _assert_usable(template, mapping)
