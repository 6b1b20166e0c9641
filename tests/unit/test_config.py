"""The config loader: upstream keys load unchanged; bad keys and values are named."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from niffler.cold_extraction.config import ColdConfig
from niffler.common.config import describe_config, load_config, log_config, parse_bool, setting
from niffler.common.errors import ConfigError


@dataclass(frozen=True)
class Sample:
    Name: str = setting("x", "a name")
    Count: int = setting(1, "a count", minimum=0, maximum=10)
    Flag: bool = setting(False, "a switch")
    Level: str = setting("patient", "flattening", choices=("patient", "study", "series"))
    Items: list[str] = setting([], "a list")
    Password: str = setting("", "a secret", secret=True)
    Folder: Path = setting(Path("out"), "a folder")


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_defaults_apply_when_file_is_empty(tmp_path: Path) -> None:
    cfg = load_config(Sample, [write(tmp_path / "c.json", {})])
    assert cfg.Items == [] and cfg.Folder == tmp_path / "out"  # a relative default follows the file
    assert load_config(Sample) == Sample()


def test_one_rule_for_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a file: relative to the file's folder; a default: to the config's folder; a flag: to the cwd."""
    (tmp_path / "etc").mkdir()
    monkeypatch.chdir(tmp_path)
    in_file = load_config(Sample, [write(tmp_path / "etc" / "c.json", {"Folder": "data"})])
    assert in_file.Folder == tmp_path / "etc" / "data"
    default = load_config(Sample, [write(tmp_path / "etc" / "d.json", {})])
    assert default.Folder == tmp_path / "etc" / "out"
    flag = load_config(Sample, [tmp_path / "etc" / "c.json"], {"Folder": Path("mine")})
    assert flag.Folder == Path("mine") and flag.Folder.resolve() == tmp_path / "mine"
    absolute = load_config(Sample, [write(tmp_path / "etc" / "e.json", {"Folder": "/srv/x"})])
    assert absolute.Folder == Path("/srv/x")
    cold = load_config(ColdConfig, [write(tmp_path / "etc" / "cold.json", {"CsvFile": "csv/rows.csv"})])
    assert cold.CsvFile == str(tmp_path / "etc" / "csv" / "rows.csv")
    assert cold.StorageFolder == tmp_path / "etc" / "niffler-cold-data"


def test_upstream_cold_config_and_system_json_load_unchanged(tmp_path: Path) -> None:
    # Verbatim shape of upstream Niffler's modules/cold-extraction files.
    write(
        tmp_path / "system.json",
        {
            "DCM4CHEBin": "/opt/dcm4che-5.22.5/bin",
            "SrcAet": "SRC_AET@SRCHOST:104",
            "QueryAet": "QBNIFFLER:4243",
            "DestAet": "QBNIFFLER",
            "NightlyOnly": False,
            "StartHour": 19,
            "EndHour": 7,
            "NifflerID": 1,
            "MaxNifflerProcesses": 1,
        },
    )
    config = write(
        tmp_path / "config.json",
        {
            "NifflerSystem": "system.json",
            "StorageFolder": "/opt/data/new-study",
            "FilePath": "{00100020}/{0020000D}/{0020000E}/{00080018}.dcm",
            "CsvFile": "csv/empi.csv",
            "NumberOfQueryAttributes": 1,
            "FirstAttr": "PatientID",
            "FirstIndex": 0,
            "SecondAttr": "AccessionNumber",
            "SecondIndex": 1,
            "ThirdAttr": "StudyDate",
            "ThirdIndex": 2,
            "DateFormat": "%Y%m%d",
            "SendEmail": True,
            "YourEmail": "test@test.test",
        },
    )
    cfg = load_config(ColdConfig, [config])
    assert cfg.SrcAet == "SRC_AET@SRCHOST:104"
    assert cfg.QueryAet == "QBNIFFLER:4243" and cfg.DestAet == "QBNIFFLER"
    assert cfg.StorageFolder == Path("/opt/data/new-study")
    assert (cfg.StartHour, cfg.EndHour, cfg.SendEmail) == (19, 7, True)
    assert cfg.DateFormat == "%Y%m%d"
    assert cfg.CsvFile == str(tmp_path / "csv" / "empi.csv")  # beside config.json, where upstream ran from


def test_split_files_given_separately_merge_later_wins(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", {"SrcAet": "PACS@127.0.0.1:104", "StartHour": 19})
    b = write(tmp_path / "b.json", {"StartHour": 20})
    cfg = load_config(ColdConfig, [a, b])
    assert cfg.SrcAet == "PACS@127.0.0.1:104" and cfg.StartHour == 20


def test_unknown_key_is_named_with_file_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"Cuont": 3})
    with pytest.raises(ConfigError, match=r"unknown config key 'Cuont' in .*c\.json; did you mean 'Count'"):
        load_config(Sample, [path])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"Count": "many"}, r"Count: expected an integer, got 'many'"),
        ({"Count": 11}, r"Count: 11 is above the maximum 10"),
        ({"Count": True}, r"Count: expected an integer"),
        ({"Flag": "perhaps"}, r"Flag: expected true or false, got 'perhaps'"),
        ({"Level": "instance"}, r"Level: 'instance' is not one of 'patient', 'study', 'series'"),
        ({"Name": {"a": 1}}, r"Name: expected text"),
        ({"Folder": ""}, r"Folder: expected a path"),
    ],
)
def test_wrong_values_name_the_key_and_file(tmp_path: Path, data: dict[str, object], message: str) -> None:
    path = write(tmp_path / "bad.json", data)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(Sample, [path])
    assert "bad.json" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("false", False),
        ("False", False),
        ("no", False),
        ("0", False),
        ("true", True),
        ("YES", True),
        (1, True),
    ],
)
def test_boolean_strings_mean_what_they_say(tmp_path: Path, text: object, expected: bool) -> None:
    cfg = load_config(Sample, [write(tmp_path / "c.json", {"Flag": text})])
    assert cfg.Flag is expected
    assert parse_bool(text) is expected


def test_cli_overrides_win_and_none_keeps_file_value(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"Count": 2, "Name": "file"})
    cfg = load_config(Sample, [path], overrides={"Count": "5", "Name": None, "Flag": "false"})
    assert (cfg.Count, cfg.Name, cfg.Flag) == (5, "file", False)


def test_cli_override_of_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'Nope' in command line"):
        load_config(Sample, [], overrides={"Nope": 1})


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{\n  "Count": 1,\n  "Name": "x"\n  "Flag": true\n}')
    with pytest.raises(ConfigError, match=r"c\.json: invalid JSON at line 4 column 3"):
        load_config(Sample, [path])


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nothere\.json"):
        load_config(Sample, [tmp_path / "nothere.json"])


def test_list_accepts_json_list_or_comma_text(tmp_path: Path) -> None:
    assert load_config(Sample, [write(tmp_path / "a.json", {"Items": ["A", "B"]})]).Items == ["A", "B"]
    assert load_config(Sample, overrides={"Items": "A, B,"}).Items == ["A", "B"]


def test_cross_key_validation_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SrcAet 'PACS@host': expected AET@host:port"):
        load_config(ColdConfig, overrides={"SrcAet": "PACS@host"})
    with pytest.raises(ConfigError, match="must not contain"):
        load_config(ColdConfig, overrides={"FilePath": "../{00100020}.dcm"})
    assert load_config(ColdConfig, overrides={"FilePath": "CFIND-ONLY"}).FilePath == "CFIND-ONLY"


def test_effective_config_masks_secrets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(Sample, overrides={"Password": "hunter2"})
    assert describe_config(cfg)["Password"] == "********"
    with caplog.at_level(logging.INFO):
        log_config(cfg)
    assert caplog.text == ""  # the effective config is for -v only
    with caplog.at_level(logging.DEBUG):
        log_config(cfg)
    assert "hunter2" not in caplog.text and "Password" in caplog.text


def test_shipped_cold_config_loads_and_names_every_key() -> None:
    shipped = Path(__file__).parents[2] / "configs" / "cold_extraction.json"
    cfg = load_config(ColdConfig, [shipped])
    assert cfg.SrcAet == "ORTHANC@127.0.0.1:4242" and cfg.QueryAet == "NIFFLER:4243"
    assert set(json.loads(shipped.read_text())) == set(describe_config(cfg))
