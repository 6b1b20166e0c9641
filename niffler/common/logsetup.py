"""Logging set-up shared by every Niffler process: a console command and the workers it starts.

A worker (niffler-png's process pool, a Dask worker) never runs the
command's :func:`~niffler.common.cli.setup_logging`, so it calls
:func:`configure_worker` instead: the same handler, format, level and the
same guards against libraries quoting DICOM values in the log.

The guards (house rule: no PHI in a log, at any verbosity):

- pydicom's reading checks are off, so it never warns that a value (a UID, a
  name) breaks its VR, quoting the value;
- Python warnings raised inside pydicom (an unknown Specific Character Set,
  quoted) are ignored;
- pydicom's own log records lose their text (that it warned shows at -v);
- pynetdicom's records show only with -v (Niffler's own message says what
  failed), and lose any SOP Instance UID, any quoted value and any exception
  text; with -vv (its INFO) it does not log C-FIND identifiers;
- httpx and httpcore (niffler-cold over DICOMweb) never show: their records
  name request URLs, which hold UIDs and QIDO-RS query values (Niffler's own
  message names the HTTP status).
"""

from __future__ import annotations

import logging
import re
import sys
import warnings

from pydicom import config as pydicom_config

__all__ = ["LOG_FORMAT", "configure_process", "configure_pydicom", "configure_worker", "level_for"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The name of the stderr handler Niffler puts on the root logger (so a worker sees it is set up).
HANDLER_NAME = "niffler-stderr"
_WITHHELD = "(withheld)"
#: pynetdicom text that carries a value: a SOP Instance UID line, a quoted value.
_PYNETDICOM_VALUES = (
    (re.compile(r"(SOP Instance UID\s*:\s*).*"), r"\1" + _WITHHELD),
    (re.compile(r"(value\s*)'.*'"), r"\1" + _WITHHELD),
)


def level_for(verbose: int = 0, quiet: int = 0) -> int:
    """The root level for -v/-q counts: INFO by default, each -v one step down, each -q one up."""
    return max(logging.DEBUG, min(logging.CRITICAL, logging.INFO - 10 * verbose + 10 * quiet))


def _library(record: logging.LogRecord) -> str:
    return record.name.split(".", 1)[0]


class _NoValues(logging.Filter):
    """The stderr handler's filter: library records never show a DICOM value."""

    def filter(self, record: logging.LogRecord) -> bool:
        library = _library(record)
        if library in ("httpx", "httpcore"):
            return False
        if library == "pydicom":
            # Its warnings quote values (a character set, a UID); that it warned
            # is left, for -v.
            record.msg, record.args = (
                "a pydicom %s; its text is withheld: it may quote a DICOM value",
                (record.levelname.lower(),),
            )
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            record.exc_info = record.exc_text = record.stack_info = None
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        if library == "pynetdicom":
            if not logging.getLogger().isEnabledFor(logging.DEBUG):
                # Niffler's own one-line message says what failed (a rejection's reason, a
                # refused connection, an abort); pynetdicom's records of it are for -v.
                return False
            if record.exc_info or record.exc_text:
                kind = type(record.exc_info[1]).__name__ if record.exc_info else "an exception"
                record.msg, record.args = (
                    "%s in pynetdicom; its text is withheld: it may quote a value",
                    (kind,),
                )
                record.exc_info = record.exc_text = record.stack_info = None
                return True
            text = record.getMessage()
            for pattern, replacement in _PYNETDICOM_VALUES:
                text = pattern.sub(replacement, text)
            record.msg, record.args = text, None
        return True


def configure_pydicom() -> None:
    """Stop pydicom putting DICOM values in warnings and logs (idempotent).

    pydicom checks values as it reads them and warns when one breaks its VR's
    rules, quoting a malformed UID (a study's or patient's UID identifies
    them: PS3.15 replaces it). Niffler never acts on those warnings, and the
    regex per UID was a quarter of the CPU of accepting a PACS's association
    (every proposed context's UIDs). Setting a value checks it the same way.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    # Other pydicom warnings quote values too (an unknown Specific Character
    # Set); pydicom attributes them to its own modules. (An identical filter
    # replaces the earlier one: calling this again adds nothing.)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


def configure_process(level: int, *, dicom_traffic: bool = False) -> None:
    """Log to stderr at *level* with Niffler's format and guards; pynetdicom's traffic only if asked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_NoValues())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # pynetdicom logs every PDU at INFO; keep its noise for -vv, but never the C-FIND
    # identifiers (PatientID, names, dates) it would log with it. Its switch for that is an
    # internal, behind the accelerator's seam; without it, its traffic stays hidden.
    # Imported here: a command that never logs pynetdicom's traffic need not load it.
    traffic = False
    if dicom_traffic:
        from niffler.net import accel

        traffic = accel.withhold_identifiers()
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if traffic else logging.WARNING)
    for library in ("httpx", "httpcore"):  # withheld by the filter anyway; not even made
        logging.getLogger(library).setLevel(logging.WARNING)
    configure_pydicom()


def configure_worker(level: int) -> None:
    """Set up a worker process like its command (idempotent: cheap to call at the start of every task).

    The initializer of niffler-png's process pool, and the first call of
    every task on a Dask worker (long-lived, shared: the set-up is checked,
    not assumed).
    """
    root = logging.getLogger()
    ready = root.level == level and any(h.get_name() == HANDLER_NAME for h in root.handlers)
    if not ready:
        configure_process(level)
    else:
        configure_pydicom()
