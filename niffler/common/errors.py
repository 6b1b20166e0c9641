"""The one exception tree of Niffler.

Every error that Niffler raises on purpose derives from :class:`NifflerError`;
each ``cli.py`` catches it at the edge, prints one line and exits 1 (the exit
codes of every command: 0 all done; 1 configuration, usage or environment
error; 2 some rows or files failed, or still fail after a resume; 130
interrupted)::

    NifflerError
    ├── ConfigError            a config file, key, value or CLI override is wrong
    ├── InputError             user data is unusable (CSV row, date, DICOM file)
    │   └── TemplateError      a FilePath template is malformed
    ├── DicomNetworkError      a DICOM peer could not be reached or refused us
    │   └── AssociationError   association rejected, aborted or timed out
    ├── StoreError             the metadata store failed
    │   ├── StoreUnavailable   MongoDB (or the embedded server) cannot be reached
    │   └── EmbeddedStoreMissing  the ``embedded`` extra is not installed
    ├── LedgerError            the progress ledger cannot be opened or written
    ├── DeidError              de-identification cannot proceed (bad key, policy, an
    │                          instance nested too deep)
    └── ServiceError           a daemon's worker died: exit non-zero so it is restarted
"""

from __future__ import annotations

__all__ = [
    "AssociationError",
    "ConfigError",
    "DeidError",
    "DicomNetworkError",
    "EmbeddedStoreMissing",
    "InputError",
    "LedgerError",
    "NifflerError",
    "ServiceError",
    "StoreError",
    "StoreUnavailable",
    "TemplateError",
]


class NifflerError(Exception):
    """Base of every error Niffler raises on purpose."""

    exit_code = 1


class ConfigError(NifflerError):
    """A config file, key, value or CLI override is wrong."""


class InputError(NifflerError):
    """User-supplied data (CSV row, date, DICOM file) cannot be used."""


class TemplateError(InputError):
    """A dcm4che-style FilePath template is malformed."""


class DicomNetworkError(NifflerError):
    """A DICOM peer could not be reached or refused the request."""


class AssociationError(DicomNetworkError):
    """An association was rejected, aborted or timed out."""


class StoreError(NifflerError):
    """The metadata store failed."""


class StoreUnavailable(StoreError):
    """The metadata store cannot be reached."""


class EmbeddedStoreMissing(StoreError):
    """The embedded store was asked for but its extra is not installed."""


class LedgerError(NifflerError):
    """The progress ledger cannot be opened or written."""


class DeidError(NifflerError):
    """De-identification cannot proceed (missing key, invalid policy)."""


class ServiceError(NifflerError):
    """A long-running service cannot go on (a worker died): exit non-zero so a supervisor restarts it."""
