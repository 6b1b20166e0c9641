"""niffler-cold's DICOMweb pieces that need no server: multipart reading, requests, messages, settings."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.dicomweb.client import HttpSettings, http_problem
from niffler.cold_extraction.dicomweb.multipart import (
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    TruncatedBody,
    boundary_of,
)
from niffler.cold_extraction.dicomweb.qido import element_text, match_of, qido_request, wado_path
from niffler.cold_extraction.retry import PermanentFailure, Retrier
from niffler.cold_extraction.verdict import Transfer, verify_transfer
from niffler.common.errors import ConfigError
from niffler.net.scu import RetrievalFailed

BOUNDARY = "a9d8d0ca-02cd-4275"
PARTS = [b"first part\r\n--not-the-boundary", b"", b"x" * 300 + b"\r\n-" + b"y" * 50]


def body(parts: list[bytes], preamble: bytes = b"", epilogue: bytes = b"\r\n", padding: bytes = b"") -> bytes:
    """A multipart/related body as Orthanc frames it (a Content-Type header per part)."""
    out = preamble
    for part in parts:
        out += (
            f"--{BOUNDARY}".encode()
            + padding
            + b"\r\nContent-Type: application/dicom\r\n\r\n"
            + part
            + b"\r\n"
        )
    return out + f"--{BOUNDARY}--".encode() + epilogue


def read(data: bytes, size: int) -> tuple[list[bytes], list[dict[str, str]], MultipartReader]:
    """Feed *data* in pieces of *size*; return each part's bytes, its headers and the reader."""
    reader = MultipartReader(BOUNDARY)
    parts: list[bytes] = []
    headers: list[dict[str, str]] = []
    current: list[bytes] | None = None
    for start in range(0, len(data), size):
        for event in reader.feed(data[start : start + size]):
            if isinstance(event, PartStart):
                headers.append(event.headers)
                current = []
            elif isinstance(event, PartData):
                assert current is not None
                current.append(event.data)
            elif isinstance(event, PartEnd):
                assert current is not None
                parts.append(b"".join(current))
                current = None
    return parts, headers, reader


@pytest.mark.parametrize("size", [1, 2, 3, 7, 19, 25, 64, 1000])
def test_parts_come_out_whole_wherever_the_pieces_are_cut(size: int) -> None:
    parts, headers, reader = read(body(PARTS), size)
    assert parts == PARTS
    assert headers == [{"content-type": "application/dicom"}] * 3
    reader.close()
    assert reader.complete and reader.parts == 3


def test_a_preamble_an_epilogue_and_transport_padding_are_ignored() -> None:
    data = body(PARTS, preamble=b"This is a preamble.\r\n", epilogue=b"\r\nepilogue", padding=b"  \t")
    parts, _, reader = read(data, 5)
    assert parts == PARTS
    reader.close()


def test_a_part_without_headers_is_a_part() -> None:
    data = f"--{BOUNDARY}\r\n\r\nbare\r\n--{BOUNDARY}--".encode()
    parts, headers, _ = read(data, 4)
    assert (parts, headers) == ([b"bare"], [{}])


def test_a_body_cut_anywhere_before_its_close_delimiter_is_truncated() -> None:
    data = body(PARTS)
    close = data.index(f"--{BOUNDARY}--".encode()) + len(BOUNDARY) + 4
    for cut in range(close):
        _, _, reader = read(data[:cut], 11)
        with pytest.raises(TruncatedBody) as caught:
            reader.close()
        assert "ended before its closing boundary" in str(caught.value)
    _, _, reader = read(data[:close], 11)
    reader.close()


def test_memory_stays_flat_however_large_a_part_is() -> None:
    """A 4 MB part fed in 64 KiB pieces comes out in pieces no larger than what was fed."""
    piece = 64 * 1024
    big = bytes(range(256)) * (16 * 1024)
    reader = MultipartReader(BOUNDARY)
    largest = received = 0
    data = body([big])
    for start in range(0, len(data), piece):
        for event in reader.feed(data[start : start + piece]):
            if isinstance(event, PartData):
                largest = max(largest, len(event.data))
                received += len(event.data)
    reader.close()
    assert received == len(big) and largest <= piece + len(BOUNDARY) + 4


@pytest.mark.parametrize(
    "data",
    [
        f"--{BOUNDARY}garbage\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\n".encode() + b"X-Long: " + b"a" * 20000,
    ],
    ids=["garbage-after-delimiter", "header-without-colon", "endless-headers"],
)
def test_a_malformed_body_is_an_error(data: bytes) -> None:
    with pytest.raises(MultipartError):
        read(data, 1000)


def test_the_boundary_comes_from_the_content_type() -> None:
    assert boundary_of(f'multipart/related; type="application/dicom"; boundary={BOUNDARY}') == BOUNDARY
    assert boundary_of('multipart/related; boundary="a b:c"; type="application/dicom"') == "a b:c"
    assert boundary_of("application/dicom+json") is None
    assert boundary_of("multipart/related") is None


# --- requests and answers ---------------------------------------------------------------------------


def test_qido_requests_carry_the_planned_identifiers_and_the_return_keys() -> None:
    path, params = qido_request(
        {"PatientID": "000123", "StudyDate": "20200101-20200131"},
        ("PatientID", "StudyInstanceUID", "NumberOfStudyRelatedInstances"),
    )
    assert path == "studies"
    assert params == [
        ("PatientID", "000123"),  # leading zeros kept
        ("StudyDate", "20200101-20200131"),  # a range, as in C-FIND
        ("includefield", "StudyInstanceUID"),
        ("includefield", "NumberOfStudyRelatedInstances"),
    ]


def test_series_level_queries_name_their_study_in_the_path_or_search_every_series() -> None:
    keys = ("StudyInstanceUID", "SeriesInstanceUID")
    assert qido_request({"StudyInstanceUID": "1.2.3", "Modality": "MR"}, keys, "SERIES") == (
        "studies/1.2.3/series",
        [("Modality", "MR"), ("includefield", "StudyInstanceUID"), ("includefield", "SeriesInstanceUID")],
    )
    path, params = qido_request({"StudyInstanceUID": "", "SeriesInstanceUID": "1.2.3.4"}, keys, "SERIES")
    assert path == "series" and params[0] == ("SeriesInstanceUID", "1.2.3.4")
    assert wado_path("SERIES", "1.2.3.4", "1.2.3") == "studies/1.2.3/series/1.2.3.4"
    assert (
        wado_path("STUDY", "1.2/../3") == "studies/1.2%2F..%2F3"
    )  # a UID from an answer never leaves the path


def test_dicom_json_answers_read_as_c_find_matches() -> None:
    dataset = {
        "00100020": {"vr": "LO", "Value": ["000001"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane", "Ideographic": "X"}]},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00201208": {"vr": "IS", "Value": [12]},
        "00081030": {"vr": "LO"},
    }
    keys = ("PatientID", "PatientName", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
            "StudyDescription", "AccessionNumber")  # fmt: skip
    assert match_of(dataset, keys) == {
        "PatientID": "000001",
        "PatientName": "Doe^Jane=X",
        "ModalitiesInStudy": "CT\\MR",
        "NumberOfStudyRelatedInstances": "12",
        "StudyDescription": "",
        "AccessionNumber": "",
    }
    assert element_text({"vr": "PN", "Value": [{"Alphabetic": "A^B"}]}) == "A^B"
    with pytest.raises(ValueError, match="DICOM JSON"):
        match_of(["not a dataset"], keys)


# --- what an HTTP status means -----------------------------------------------------------------------


def settings(auth: str = "basic") -> HttpSettings:
    return HttpSettings("http://127.0.0.1:9/dicom-web", 10, auth, "alice", "SECRET_VAR", "hunter2")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_server_errors_timeouts_and_slow_downs_are_retried(status: int) -> None:
    problem = http_problem(status, "WADO-RS")
    assert type(problem) is RetrievalFailed
    assert str(problem).startswith(f"WADO-RS: HTTP {status} ")


@pytest.mark.parametrize(
    ("status", "what", "auth", "message"),
    [
        (401, "QIDO-RS", "basic", "QIDO-RS: HTTP 401 Unauthorized: the archive refused our credentials "
                                  "(check DicomWebUser and the password in $SECRET_VAR)"),
        (401, "QIDO-RS", "bearer", "QIDO-RS: HTTP 401 Unauthorized: the archive refused our credentials "
                                   "(check the token in $SECRET_VAR)"),
        (401, "QIDO-RS", "none", "QIDO-RS: HTTP 401 Unauthorized: the archive refused our credentials "
                                 "(DicomWebAuth is none: the archive wants credentials)"),
        (403, "WADO-RS", "basic", "WADO-RS: HTTP 403 Forbidden: the archive does not let these credentials "
                                  "read this"),
        (404, "WADO-RS", "basic", "WADO-RS: HTTP 404 Not Found: the archive has no such study or series "
                                  "(deleted since QIDO-RS matched it?)"),
        (404, "QIDO-RS", "basic", "QIDO-RS: HTTP 404 Not Found: the archive has no such resource "
                                  "(is DicomWebUrl the DICOMweb root?)"),
        (406, "WADO-RS", "basic", "WADO-RS: HTTP 406 Not Acceptable: the archive cannot send what the Accept "
                                  "header asks for (multipart/related application/dicom; try "
                                  "TransferSyntaxPolicy uncompressed)"),
        (302, "QIDO-RS", "basic", "QIDO-RS: HTTP 302 Found: the archive redirects elsewhere: set DicomWebUrl "
                                  "to where it points"),
        (418, "QIDO-RS", "basic", "QIDO-RS: HTTP 418 I'm a Teapot"),
    ],
)  # fmt: skip
def test_client_errors_say_what_they_mean_and_are_not_retried(
    status: int, what: str, auth: str, message: str
) -> None:
    problem = http_problem(status, what, settings(auth))
    assert isinstance(problem, PermanentFailure)
    assert str(problem) == message
    assert "hunter2" not in str(problem)


def test_a_permanent_failure_is_not_retried_and_a_transient_one_is() -> None:
    calls: list[int] = []

    def fail(error: RetrievalFailed) -> None:
        calls.append(1)
        raise error

    retrier = Retrier(3, 0.0, threading.Event())
    with pytest.raises(PermanentFailure):
        retrier(2, lambda: fail(PermanentFailure("WADO-RS: HTTP 404 Not Found")))
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(RetrievalFailed, match=r"\(after 4 attempts\)"):
        retrier(2, lambda: fail(RetrievalFailed("WADO-RS: HTTP 503 Service Unavailable")))
    assert len(calls) == 4


def test_a_wado_verdict_names_qido_as_the_source_of_the_count() -> None:
    short = Transfer(status=0, completed=3, failed=0, warning=0, received=3)
    assert verify_transfer(short, 4, "WADO-RS") == (
        "retrieved 3 instance(s) but QIDO-RS reported NumberOfStudyRelatedInstances 4"
    )
    assert verify_transfer(short, 4, "C-MOVE") == (
        "retrieved 3 instance(s) but C-FIND reported NumberOfStudyRelatedInstances 4"
    )


# --- settings: secrets from the environment only ------------------------------------------------------


def web_config(**keys: object) -> ColdConfig:
    return ColdConfig(Transport="dicomweb", DicomWebUrl="https://pacs.example.org/dicom-web/", **keys)  # type: ignore[arg-type]


def test_the_password_comes_from_the_named_environment_variable() -> None:
    config = web_config(DicomWebAuth="basic", DicomWebUser="alice", DicomWebPasswordEnv="PACS_PW")
    found = HttpSettings.from_config(config, {"PACS_PW": "hunter2"})
    assert (found.url, found.user, found.secret, found.secret_env) == (
        "https://pacs.example.org/dicom-web", "alice", "hunter2", "PACS_PW",
    )  # fmt: skip
    assert "hunter2" not in repr(found)
    with pytest.raises(ConfigError, match="environment variable PACS_PW, which is not set"):
        HttpSettings.from_config(config, {})


def test_the_user_name_may_come_from_the_environment_and_a_token_from_its_own_variable() -> None:
    basic = web_config(DicomWebAuth="basic")
    env = {"NIFFLER_DICOMWEB_USER": "bob", "NIFFLER_DICOMWEB_PASSWORD": "pw"}
    assert HttpSettings.from_config(basic, env).user == "bob"
    with pytest.raises(ConfigError, match="needs a user name"):
        HttpSettings.from_config(basic, {"NIFFLER_DICOMWEB_PASSWORD": "pw"})
    bearer = HttpSettings.from_config(web_config(DicomWebAuth="bearer"), {"NIFFLER_DICOMWEB_TOKEN": "t0k"})
    assert (bearer.user, bearer.secret) == ("", "t0k")
    client = bearer.client()
    try:
        assert client.headers["Authorization"] == "Bearer t0k"
        assert client.follow_redirects is False
    finally:
        client.close()


def test_a_missing_ca_bundle_and_a_missing_url_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"DicomWebCaBundle .* is not a file"):
        HttpSettings.from_config(web_config(DicomWebCaBundle=str(tmp_path / "none.pem")), {})
    with pytest.raises(ConfigError, match="DicomWebUrl is empty"):
        HttpSettings.from_config(ColdConfig(Transport="dicomweb"), {})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://alice:hunter2@pacs.example.org/dicom-web", "must not carry a user name or password"),
        ("ftp://pacs.example.org/dicom-web", "must be an http:// or https:// URL"),
        ("pacs.example.org/dicom-web", "must be an http:// or https:// URL"),
        ("alice:hunter2@pacs.example.org/dicom-web", "must be an http:// or https:// URL"),
        ("https://pacs.example.org/dicom-web?token=x", "without a query or fragment"),
    ],
)
def test_a_dicomweb_url_with_credentials_or_not_http_is_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        ColdConfig(Transport="dicomweb", DicomWebUrl=url)
    assert "hunter2" not in str(caught.value)


def test_the_secret_variables_must_be_variable_names() -> None:
    with pytest.raises(ConfigError, match="DicomWebPasswordEnv must name an environment variable"):
        ColdConfig(DicomWebPasswordEnv="hunter2 is my password")


def test_a_dimse_run_does_not_import_the_http_stack() -> None:
    """httpx is imported only when Transport is dicomweb: a DIMSE run's start-up does not pay for it."""
    code = (
        "import sys, niffler.cold_extraction.cli, niffler.cold_extraction.run; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'httpcore')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
