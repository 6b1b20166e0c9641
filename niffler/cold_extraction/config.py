"""The config of niffler-cold: upstream's config.json + system.json keys, unchanged, and a few new ones."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from niffler.common.config import setting
from niffler.common.errors import ConfigError
from niffler.common.filepath import DEFAULT_FILE_PATH, FileTemplate
from niffler.net.address import AEAddress, validate_ae_title
from niffler.net.syntaxes import POLICIES

__all__ = ["ANY_CALLING_AET", "DICOMWEB_AUTH", "MODES", "QUERY_ONLY_MODES", "TRANSPORTS", "ColdConfig"]

#: An AllowedCallingAets entry that lets any calling AE title store to our receiver.
ANY_CALLING_AET = "*"

#: FilePath sentinels that switch upstream into query-only modes.
QUERY_ONLY_MODES = ("CFIND-ONLY", "CFIND-DETAILED")
#: How rows are served: C-MOVE to a Storage SCP, C-GET on the query
#: association, or C-FIND only (the two upstream FilePath sentinels).
MODES = ("move", "get", "cfind-only", "cfind-detailed")
#: How Niffler talks to the archive: DIMSE (C-FIND, C-MOVE/C-GET) or DICOMweb (QIDO-RS, WADO-RS; PS3.18).
TRANSPORTS = ("dimse", "dicomweb")
#: How the DICOMweb requests authenticate: not at all, HTTP basic, or a bearer token.
DICOMWEB_AUTH = ("none", "basic", "bearer")


@dataclass(frozen=True)
class ColdConfig:
    """Settings of a retrospective retrieval run (upstream key names)."""

    Transport: str = setting(
        "dimse",
        "dimse: C-FIND, then C-MOVE or C-GET from SrcAet; dicomweb: QIDO-RS, then WADO-RS from DicomWebUrl",
        choices=TRANSPORTS,
    )
    SrcAet: str = setting("", "the PACS to query and retrieve from, as AET@host:port")
    QueryAet: str = setting("NIFFLER:4243", "our AE title and the port our Storage SCP listens on, AET:port")
    DestAet: str = setting("", "C-MOVE destination AE title; empty means QueryAet's (our own receiver)")
    BindAddress: str = setting(
        "",
        "interface our receiver listens on; empty: the local address that reaches SrcAet's host "
        "(127.0.0.1 for a PACS on loopback); 0.0.0.0: every interface",
    )
    AllowedCallingAets: list[str] = setting(
        [],
        'calling AE titles our receiver accepts besides SrcAet\'s own title; ["*"]: any',
    )
    TransferSyntaxPolicy: str = setting(
        "lossless", "lossless: lossless syntaxes first, lossy only if nothing else is offered; "
        "uncompressed: uncompressed first; never-lossy: refuse lossy syntaxes (receiver and C-GET)",
        choices=POLICIES,
    )  # fmt: skip
    NightlyOnly: bool = setting(False, "only retrieve between StartHour and EndHour")
    StartHour: int = setting(19, "hour (0-23) the nightly window opens", minimum=0, maximum=23)
    EndHour: int = setting(7, "hour (0-23) the nightly window closes", minimum=0, maximum=23)
    NifflerID: int = setting(1, "identifier of this Niffler instance, for logs and reports", minimum=0)
    MaxNifflerProcesses: int = setting(
        1,
        "concurrent associations to the PACS; above 1, the C-MOVE receiver also runs in this many "
        "processes (at most one per CPU)",
        minimum=1,
        maximum=64,
    )
    StorageFolder: Path = setting(Path("niffler-cold-data"), "folder retrieved files are stored under")
    FilePath: str = setting(DEFAULT_FILE_PATH, "dcm4che-style path template, or CFIND-ONLY / CFIND-DETAILED")
    CsvFile: str = setting("", "CSV of rows to retrieve (overridden by --csv)")
    NumberOfQueryAttributes: int = setting(
        0,
        "0: the CSV header names the columns by DICOM keyword; 1-3: upstream's legacy form, "
        "columns picked by FirstAttr/FirstIndex... when the header names no keywords",
        minimum=0,
        maximum=3,
    )
    FirstAttr: str = setting("PatientID", "DICOM keyword of the first query column (legacy form)")
    FirstIndex: int = setting(0, "0-based CSV column of FirstAttr (legacy form)", minimum=0)
    SecondAttr: str = setting("AccessionNumber", "DICOM keyword of the second query column (legacy form)")
    SecondIndex: int = setting(1, "0-based CSV column of SecondAttr (legacy form)", minimum=0)
    ThirdAttr: str = setting("StudyDate", "DICOM keyword of the third query column (legacy form)")
    ThirdIndex: int = setting(2, "0-based CSV column of ThirdAttr (legacy form)", minimum=0)
    LongAccession: bool = setting(False, "shorten 4-digit-year accessions longer than 16 characters")
    DateFormat: str = setting("%Y%m%d", "strptime format of StudyDate cells")
    SendEmail: bool = setting(False, "e-mail YourEmail when the run completes")
    YourEmail: str = setting("", "address for the completion e-mail", secret=False)
    Mode: str = setting(
        "move",
        "move (C-MOVE), get (C-GET), cfind-only or cfind-detailed; with Transport dicomweb, move and get "
        "both retrieve with WADO-RS",
        choices=MODES,
    )
    StudiesPerMove: int = setting(
        10,
        "studies one C-MOVE / C-GET asks for, as a list of StudyInstanceUIDs (1: one study each)",
        minimum=1,
        maximum=1000,
    )
    Retries: int = setting(3, "extra attempts for a failed C-FIND / C-MOVE / C-GET", minimum=0, maximum=20)
    RetryDelaySeconds: float = setting(
        2.0, "wait before the first retry; doubled for each further one", minimum=0, maximum=3600
    )
    TimeoutSeconds: float = setting(
        120.0,
        "give up on a PACS that sends nothing for this long (association, DIMSE, network; HTTP reads)",
        minimum=1,
        maximum=86400,
    )
    DicomWebUrl: str = setting(
        "", "Transport dicomweb: the archive's DICOMweb root, e.g. https://pacs.example.org/dicom-web"
    )
    DicomWebAuth: str = setting(
        "none",
        "Transport dicomweb: none, basic (DicomWebUser + the password in the environment variable "
        "DicomWebPasswordEnv names) or bearer (the token in the variable DicomWebTokenEnv names)",
        choices=DICOMWEB_AUTH,
    )
    DicomWebUser: str = setting("", "user name for DicomWebAuth basic; empty: $NIFFLER_DICOMWEB_USER")
    DicomWebPasswordEnv: str = setting(
        "NIFFLER_DICOMWEB_PASSWORD", "environment variable holding the basic-auth password (never the file)"
    )
    DicomWebTokenEnv: str = setting(
        "NIFFLER_DICOMWEB_TOKEN", "environment variable holding the bearer token (never the file)"
    )
    DicomWebVerifyTls: bool = setting(
        True, "verify the archive's TLS certificate and host name (https); false only for a test archive"
    )
    DicomWebCaBundle: str = setting(
        "", "PEM file of the CA certificates that sign the archive's certificate; empty: certifi's bundle"
    )

    @property
    def receiver_calling_aets(self) -> list[str] | None:
        """The calling AE titles our receiver accepts: SrcAet's title and AllowedCallingAets; None: any."""
        if ANY_CALLING_AET in self.AllowedCallingAets:
            return None
        titles = [AEAddress.parse(self.SrcAet, "SrcAet").title] if self.SrcAet else []
        titles += [t.strip() for t in self.AllowedCallingAets]
        return list(dict.fromkeys(titles))

    @property
    def mode(self) -> str:
        """The effective mode: a CFIND-ONLY / CFIND-DETAILED FilePath turns move into it, as upstream."""
        if self.Mode in ("move", "get") and self.FilePath in QUERY_ONLY_MODES:
            return self.FilePath.lower()
        return self.Mode

    def __post_init__(self) -> None:
        if self.SrcAet:
            AEAddress.parse(self.SrcAet, "SrcAet")
        AEAddress.parse(self.QueryAet, "QueryAet")
        if self.DestAet:
            validate_ae_title(self.DestAet, "DestAet")
        if self.BindAddress.strip():
            try:
                ipaddress.ip_address(self.BindAddress.strip())
            except ValueError:
                raise ConfigError(
                    f"BindAddress must be an IP address of this host (or empty), not {self.BindAddress!r}"
                ) from None
        if not isinstance(self.AllowedCallingAets, list):
            raise ConfigError("AllowedCallingAets must be a list of AE titles")
        for title in self.AllowedCallingAets:
            if title != ANY_CALLING_AET:
                validate_ae_title(title, "AllowedCallingAets entry")
        if self.DicomWebUrl:
            _check_dicomweb_url(self.DicomWebUrl)
        for key in ("DicomWebPasswordEnv", "DicomWebTokenEnv"):
            if not _ENV_NAME.fullmatch(getattr(self, key)):
                raise ConfigError(f"{key} must name an environment variable (letters, digits, _)")
        if self.FilePath not in QUERY_ONLY_MODES:
            FileTemplate.parse(self.FilePath)
        elif self.Mode == "get":
            raise ConfigError(f"Mode {self.Mode!r} needs a FilePath template, not {self.FilePath!r}")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_dicomweb_url(url: str) -> None:
    """Refuse a DicomWebUrl that is not an http(s) URL, or that carries credentials or a query."""
    parts = urlsplit(url.strip())
    # The URL is never echoed: a mistyped one may hold a password.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("DicomWebUrl must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "DicomWebUrl must not carry a user name or password: set DicomWebAuth basic, DicomWebUser "
            "and the password in the environment variable DicomWebPasswordEnv names"
        )
    if parts.query or parts.fragment:
        raise ConfigError("DicomWebUrl must be the DICOMweb root, without a query or fragment")
