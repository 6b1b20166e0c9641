"""The DICOMweb session: QIDO-RS to resolve rows, WADO-RS to retrieve them, over httpx.

A :class:`DicomWebSession` is what a worker of the run uses in place of the
DIMSE :class:`~niffler.cold_extraction.retrieve.PacsSession`: the same
:class:`~niffler.cold_extraction.retrieve.Session` seam, so the query
planning, the verdict, retries, the ledger, the report and the progress bar
are the DIMSE ones.

- ``find_distinct``: a QIDO-RS search (:mod:`.qido`), page by page
  (``limit``/``offset``, and on while the archive warns of more results);
  when the archive reports no NumberOfStudyRelatedInstances
  (NumberOfSeriesRelatedInstances), the count comes from a QIDO-RS
  instance-level search of that study (series), so the verdict always has
  a count to check.
- ``transfer``: one WADO-RS request per study or series, its multipart
  answer streamed through :class:`~.multipart.MultipartReader` into
  :class:`~.parts.PartWriter` piece by piece as it arrives.

Failures become :class:`~niffler.net.scu.RetrievalFailed` (retried with the
run's backoff: 5xx, 408, 429, timeouts, connections refused or broken,
multipart bodies cut short) or
:class:`~niffler.cold_extraction.retry.PermanentFailure` (reported at once:
the other 4xx, a TLS certificate that does not verify). Messages name the
HTTP status and what it means here, never a URL (it holds UIDs and query
values), a response body (Orthanc's quotes the UID) or a credential. httpx's
own request log names URLs: :mod:`niffler.common.logsetup` withholds it.

Secrets come from environment variables only (:meth:`HttpSettings.from_config`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx

from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.dicomweb.multipart import MultipartError, MultipartReader, boundary_of
from niffler.cold_extraction.dicomweb.parts import DiskRefused, PartWriter
from niffler.cold_extraction.dicomweb.qido import instances_path, match_of, qido_request, tag_of, wado_path
from niffler.cold_extraction.retrieve import Receipts, distinct_matches
from niffler.cold_extraction.retry import PermanentFailure
from niffler.cold_extraction.verdict import COUNT_KEY, UNIQUE_KEY, Target, Transfer
from niffler.common.errors import ConfigError
from niffler.net.scu import RetrievalFailed
from niffler.net.writer import InstanceWriter

__all__ = ["USER_ENV", "DicomWebSession", "HttpSettings", "echo", "http_problem"]

log = logging.getLogger(__name__)

#: Where the basic-auth user name is read from when DicomWebUser is empty.
USER_ENV = "NIFFLER_DICOMWEB_USER"
#: Results asked for per QIDO-RS request.
PAGE_SIZE = 1000
#: Transfer syntaxes asked of WADO-RS, by TransferSyntaxPolicy: the stored one (``*``), or Explicit VR LE.
_TRANSFER_SYNTAX = {"lossless": "*", "never-lossy": "*", "uncompressed": "1.2.840.10008.1.2.1"}
#: Statuses worth another attempt besides 5xx: the archive timed out or asks us to slow down.
_RETRYABLE_4XX = frozenset({408, 425, 429})
#: What a 4xx means for our requests.
_MEANING = {
    400: "the archive refused the request as malformed (a query key it does not support?)",
    401: "the archive refused our credentials",
    403: "the archive does not let these credentials read this",
    404: "the archive has no such resource",
    406: "the archive cannot send what the Accept header asks for",
    415: "the archive does not support the media type asked for",
}


@dataclass(frozen=True, repr=False)
class HttpSettings:
    """Where the DICOMweb service is and how to reach it; secrets included, so never logged (no repr)."""

    url: str
    timeout: float
    auth: str = "none"
    user: str = ""
    #: The name of the variable the secret came from, for messages (the secret itself never is named).
    secret_env: str = ""
    secret: str = field(default="", compare=False)
    verify_tls: bool = True
    ca_bundle: Path | None = None
    transfer_syntax_policy: str = "lossless"

    @classmethod
    def from_config(cls, config: ColdConfig, environ: Mapping[str, str] | None = None) -> HttpSettings:
        """The settings of *config*, the password or token read from the environment.

        Raise ConfigError naming the key or variable that is missing.
        """
        env = os.environ if environ is None else environ
        if not config.DicomWebUrl:
            raise ConfigError("DicomWebUrl is empty: name the archive's DICOMweb root (Transport dicomweb)")
        user, secret_env, secret = "", "", ""
        if config.DicomWebAuth == "basic":
            user = config.DicomWebUser or env.get(USER_ENV, "")
            if not user:
                raise ConfigError(f"DicomWebAuth basic needs a user name: set DicomWebUser or {USER_ENV}")
            secret_env = config.DicomWebPasswordEnv
        elif config.DicomWebAuth == "bearer":
            secret_env = config.DicomWebTokenEnv
        if secret_env:
            secret = env.get(secret_env, "")
            if not secret:
                raise ConfigError(
                    f"DicomWebAuth {config.DicomWebAuth} reads its secret from the environment variable "
                    f"{secret_env}, which is not set"
                )
        ca_bundle = Path(config.DicomWebCaBundle).expanduser() if config.DicomWebCaBundle else None
        if ca_bundle is not None and not ca_bundle.is_file():
            raise ConfigError(f"DicomWebCaBundle {ca_bundle} is not a file")
        return cls(
            url=config.DicomWebUrl.strip().rstrip("/"),
            timeout=config.TimeoutSeconds,
            auth=config.DicomWebAuth,
            user=user,
            secret_env=secret_env,
            secret=secret,
            verify_tls=config.DicomWebVerifyTls,
            ca_bundle=ca_bundle,
            transfer_syntax_policy=config.TransferSyntaxPolicy,
        )

    def __repr__(self) -> str:
        return f"HttpSettings(url={self.url!r}, auth={self.auth!r})"

    def warn_if_cleartext(self) -> None:
        """Log a warning when a secret would travel unencrypted, or the certificate goes unchecked."""
        https = self.url.lower().startswith("https://")
        if self.auth != "none" and not https:
            log.warning("DicomWebAuth %s over http:// sends the %s unencrypted", self.auth,
                        "password" if self.auth == "basic" else "token")  # fmt: skip
        if https and not self.verify_tls:
            log.warning("DicomWebVerifyTls is false: the archive's certificate is not checked")

    def client(self) -> httpx.Client:
        """An HTTP client for this service (one per worker)."""
        verify: ssl.SSLContext | bool
        if not self.verify_tls:
            verify = False
        elif self.ca_bundle is not None:
            verify = ssl.create_default_context(cafile=str(self.ca_bundle))
        else:
            verify = True
        auth = httpx.BasicAuth(self.user, self.secret) if self.auth == "basic" else None
        headers = {"Authorization": f"Bearer {self.secret}"} if self.auth == "bearer" else {}
        return httpx.Client(
            auth=auth,
            headers=headers,
            verify=verify,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 30.0)),
            follow_redirects=False,  # a redirect elsewhere would carry our credentials along
            trust_env=False,  # no proxy or .netrc credentials from the environment behind our back
        )

    def auth_hint(self) -> str:
        """Where the credentials of a 401 came from, for its message."""
        if self.auth == "none":
            return "DicomWebAuth is none: the archive wants credentials"
        if self.auth == "basic":
            return f"check DicomWebUser and the password in ${self.secret_env}"
        return f"check the token in ${self.secret_env}"


def http_problem(status: int, what: str, settings: HttpSettings | None = None) -> RetrievalFailed:
    """The failure an HTTP status other than 2xx means for request *what* (QIDO-RS, WADO-RS).

    Retryable (RetrievalFailed) for 5xx, 408, 425 and 429; PermanentFailure otherwise.
    """
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "unknown status"
    head = f"{what}: HTTP {status} {reason}"
    if status >= 500 or status in _RETRYABLE_4XX:
        return RetrievalFailed(f"{head} from the archive")
    meaning = _MEANING.get(status, "")
    if status == 401 and settings is not None:
        meaning = f"{meaning} ({settings.auth_hint()})"
    elif status == 404 and what == "WADO-RS":
        meaning = "the archive has no such study or series (deleted since QIDO-RS matched it?)"
    elif status == 404:
        meaning = "the archive has no such resource (is DicomWebUrl the DICOMweb root?)"
    elif status in (406, 415) and what == "WADO-RS":
        meaning = f"{meaning} (multipart/related application/dicom; try TransferSyntaxPolicy uncompressed)"
    elif 300 <= status < 400:
        meaning = "the archive redirects elsewhere: set DicomWebUrl to where it points"
    return PermanentFailure(f"{head}: {meaning}" if meaning else head)


def _os_reason(exc: BaseException) -> str | None:
    """The operating system's or TLS layer's reason in an httpx error's chain, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {seen.verify_message}"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    return None


def network_problem(exc: httpx.TransportError, what: str, timeout: float) -> RetrievalFailed:
    """The failure an httpx transport error means (no URL in it: httpx keeps that on the request)."""
    if isinstance(exc, httpx.TimeoutException):
        if isinstance(exc, httpx.ConnectTimeout):
            return RetrievalFailed(f"{what}: the archive did not accept a connection in time")
        return RetrievalFailed(f"{what}: the archive sent nothing for {timeout:g} s")
    reason = _os_reason(exc) or str(exc) or type(exc).__name__
    if "certificate verify failed" in reason or "CERTIFICATE_VERIFY_FAILED" in reason:
        why = reason.removeprefix("certificate verify failed: ")
        return PermanentFailure(
            f"{what}: the archive's TLS certificate did not verify ({why}): "
            "set DicomWebCaBundle to the PEM file of the CA that signed it"
        )
    if isinstance(exc, httpx.ConnectError):
        return RetrievalFailed(f"{what}: cannot connect to the archive ({reason})")
    return RetrievalFailed(f"{what}: the connection broke ({reason})")


class _Dropped(Exception):
    """The session was dropped while a transfer was in flight."""


class DicomWebSession:
    """One worker's connection to a DICOMweb archive (see the module's docstring)."""

    verb = "WADO-RS"

    def __init__(
        self,
        settings: HttpSettings,
        *,
        mode: str,
        receipts: Receipts,
        writer: InstanceWriter | None = None,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self._receipts = receipts
        self.writer = writer
        #: Counts are filled in from instance-level searches only when retrieving.
        self.count_instances = not mode.startswith("cfind")
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self._response: httpx.Response | None = None
        self._dropped = threading.Event()
        accept = 'multipart/related; type="application/dicom"'
        syntax = _TRANSFER_SYNTAX.get(settings.transfer_syntax_policy, "*")
        self._accept = f"{accept}; transfer-syntax={syntax}"

    @property
    def receipts(self) -> Receipts:
        return self._receipts

    @property
    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = self.settings.client()
            return self._client

    def _url(self, path: str) -> str:
        return f"{self.settings.url}/{path}"

    @contextlib.contextmanager
    def _request(
        self, what: str, path: str, params: Sequence[tuple[str, str]], accept: str
    ) -> Iterator[httpx.Response]:
        """Yield the streamed 2xx response of a GET; raise the RetrievalFailed anything else means."""
        if self._dropped.is_set():
            raise RetrievalFailed(f"{what}: interrupted")
        try:
            with self.client.stream(
                "GET", self._url(path), params=list(params), headers={"Accept": accept}
            ) as response:
                if not 200 <= response.status_code < 300:
                    raise http_problem(response.status_code, what, self.settings)
                with self._lock:
                    self._response = response
                try:
                    yield response
                finally:
                    with self._lock:
                        self._response = None
        except httpx.TransportError as exc:
            if self._dropped.is_set():
                raise RetrievalFailed(f"{what}: interrupted") from None
            raise network_problem(exc, what, self.settings.timeout) from None
        except httpx.HTTPError as exc:  # a malformed answer (bad encoding, bad header)
            raise RetrievalFailed(f"{what}: {type(exc).__name__}") from None

    # --- QIDO-RS ---------------------------------------------------------------------------------

    def _search(self, path: str, params: list[tuple[str, str]], unique: str) -> list[Any]:
        """Every DICOM JSON dataset a QIDO-RS search answers, page by page."""
        found: list[Any] = []
        seen: set[str] = set()
        offset = 0
        while True:
            page_params = [*params, ("limit", str(PAGE_SIZE)), ("offset", str(offset))]
            with self._request("QIDO-RS", path, page_params, "application/dicom+json") as response:
                body = response.read()
                more = "additional results" in response.headers.get("warning", "").lower()
            if response.status_code == 204 or not body.strip():
                page: list[Any] = []
            else:
                try:
                    page = json.loads(body)
                except ValueError:
                    raise RetrievalFailed("QIDO-RS: the archive's answer is not DICOM JSON") from None
                if isinstance(page, dict):  # one dataset sent bare
                    page = [page]
                if not isinstance(page, list):
                    raise RetrievalFailed(
                        "QIDO-RS: the archive's answer is not a list of DICOM JSON datasets"
                    )
            keys = {_unique_value(d, unique) for d in page}
            new = keys - seen
            seen |= keys
            found += page
            # An archive that ignores offset sends the first page again: nothing new ends the search.
            if not page or not new or (len(page) < PAGE_SIZE and not more):
                return found
            offset += len(page)

    def find(
        self, identifiers: Mapping[str, str], return_keys: Sequence[str], level: str = "STUDY"
    ) -> list[dict[str, str]]:
        """The QIDO-RS matches of *identifiers* at *level*, each as {keyword: text} (not de-duplicated)."""
        path, params = qido_request(identifiers, return_keys, level)
        try:
            return [match_of(d, return_keys) for d in self._search(path, params, UNIQUE_KEY[level])]
        except ValueError as exc:
            raise RetrievalFailed(f"QIDO-RS: {exc}") from None

    def find_distinct(
        self, identifiers: Mapping[str, str], return_keys: Sequence[str], level: str = "STUDY"
    ) -> list[dict[str, str]]:
        """QIDO-RS at *level*; one match per study (series), its instance count filled in when retrieving."""
        matches = distinct_matches(self.find(identifiers, return_keys, level), UNIQUE_KEY[level])
        count_key = COUNT_KEY[level]
        if self.count_instances and count_key in return_keys:
            for match in matches:
                uid, study_uid = match.get(UNIQUE_KEY[level], ""), match.get("StudyInstanceUID", "")
                named = uid and (level == "STUDY" or study_uid)  # a series is found within its study
                if named and not match.get(count_key, "").strip().isdigit():
                    match[count_key] = str(self.count(level, uid, study_uid))
        return matches

    def count(self, level: str, uid: str, study_uid: str = "") -> int:
        """The distinct instances a QIDO-RS instance-level search finds in a study or series."""
        path = instances_path(level, uid, study_uid)
        unique = "SOPInstanceUID"
        found = self._search(path, [("includefield", unique)], unique)
        return len({_unique_value(d, unique) for d in found} - {""})

    # --- WADO-RS ---------------------------------------------------------------------------------

    def transfer(self, targets: Sequence[Target]) -> Transfer:
        """Retrieve one study or series with WADO-RS; how it ended and what was stored.

        Status 0x0000 when the whole multipart answer arrived and every part
        was stored, 0xB000 when some parts were refused, 0xA700 when the disk
        refused a write (the rest is not read).
        """
        if len(targets) != 1:
            raise ValueError("WADO-RS retrieves one study or series per request")
        if self.writer is None:
            raise ValueError("a retrieving DicomWebSession needs an InstanceWriter")
        [target] = targets
        parts = PartWriter(
            self.writer,
            on_stored=self._receipts.on_stored,
            on_failed=self._receipts.on_failed,
            refuse_lossy=self.settings.transfer_syntax_policy == "never-lossy",
        )
        status = 0x0000
        path = wado_path(target.level, target.uid, target.study_uid)
        with self._request("WADO-RS", path, (), self._accept) as response:
            content_type = response.headers.get("content-type", "")
            boundary = boundary_of(content_type)
            if boundary is None:
                media_type = content_type.split(";")[0].strip() or "none"
                raise PermanentFailure(
                    f"WADO-RS: the archive answered with Content-Type {media_type}, not multipart/related"
                )
            reader = MultipartReader(boundary)
            try:
                for chunk in response.iter_bytes():
                    if self._dropped.is_set():
                        raise _Dropped
                    parts.handle(reader.feed(chunk))
                if self._dropped.is_set():  # a shut-down socket reads as the end of the body
                    raise _Dropped
                reader.close()
            except DiskRefused:
                status = 0xA700
            except _Dropped:
                raise RetrievalFailed("WADO-RS: interrupted") from None
            except MultipartError as exc:
                raise RetrievalFailed(f"WADO-RS: {exc}") from None
            except httpx.TransportError as exc:
                if self._dropped.is_set():
                    raise RetrievalFailed("WADO-RS: interrupted") from None
                failure = network_problem(exc, "WADO-RS", self.settings.timeout)
                raise RetrievalFailed(f"{failure} after {reader.parts} complete part(s)") from None
            finally:
                parts.abort()
        if status == 0x0000 and parts.failed:
            status = 0xB000
        return Transfer(
            status=status,
            completed=parts.stored,
            failed=parts.failed,
            warning=0,
            received=self._receipts.count(target.key),
        )

    def drop(self) -> None:
        """Cut the transfer in flight and refuse further requests (the run stops).

        The socket is shut down, which wakes a read blocked on it at once,
        where closing it from this thread would not.
        """
        self._dropped.set()
        with self._lock:
            response = self._response
        if response is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _unique_value(dataset: Any, keyword: str) -> str:
    if not isinstance(dataset, dict):
        return ""
    element = dataset.get(tag_of(keyword))
    values = element.get("Value") if isinstance(element, dict) else None
    return str(values[0]) if isinstance(values, list) and values else ""


def echo(settings: HttpSettings) -> str:
    """Ask the archive for one study with QIDO-RS; return its answer's status, or raise RetrievalFailed."""
    session = DicomWebSession(settings, mode="cfind-only", receipts=Receipts())
    try:
        with session._request("QIDO-RS", "studies", [("limit", "1")], "application/dicom+json") as response:
            response.read()
            return f"HTTP {response.status_code} {response.reason_phrase}".strip()
    finally:
        session.close()
