"""niffler-cold over DICOMweb (PS3.18): QIDO-RS resolves the rows, WADO-RS retrieves them.

The same CSV, query planning, verdict, retries, ledger, report and exit
codes as over DIMSE: only the session behind the
:class:`~niffler.cold_extraction.retrieve.Session` seam differs.

- :mod:`.multipart`: the streaming ``multipart/related`` reader (pure);
- :mod:`.parts`: WADO-RS parts -> the instance writer, piece by piece;
- :mod:`.qido`: identifiers -> QIDO-RS/WADO-RS requests, DICOM JSON -> matches (pure);
- :mod:`.client`: settings (secrets from the environment), HTTP errors, the session.
"""

from niffler.cold_extraction.dicomweb.client import DicomWebSession, HttpSettings, echo

__all__ = ["DicomWebSession", "HttpSettings", "echo"]
