"""The batch: discover DICOM files, convert them in parallel, stream the results to CSVs.

Work flows through the progress ledger (SQLite, in the output directory):

1. **Discover**: every regular file under DICOMHome (any depth, or exactly
   ``Depth``) is added as a pending ledger key (its path relative to
   DICOMHome), in pages, so a million files never sit in a list. Whether a
   file is DICOM is decided by its content when it is converted (the DICM
   preamble, or a header pydicom can read), never by its name.
2. **Convert**: pending keys go to a pool in batches, a bounded number in
   flight. :meth:`Converter.convert` is a pure function of the file and the
   settings: the same function runs in this process, a process pool or a
   Dask cluster. It writes the PNGs (temp name, then rename) and returns the
   de-identified header row, or the failure with a named reason (the file is
   linked or copied under ``failed-dicom/<reason>/``).
3. **Record**: each batch's results are committed to the ledger in one
   transaction. A crash loses at most the batches in flight; a re-run
   converts only what is still pending.
4. **Write**: ``metadata.csv``, ``mapping.csv`` and ``failures.csv`` are
   written from the ledger in key order (stable across runs), a page at a
   time, to temp names and renamed into place; after each 1/SplitIntoChunks
   of the files and at the end.

Outputs that carry PHI or re-identify: ``mapping.csv`` (original path ->
PNG), ``failures.csv`` and ``failed-dicom/`` (original files), and the ledger.
``extracted-images/`` and ``metadata.csv`` are de-identified.

Logs, from this process and every worker, name a file only by its position
in the run and its instance key (``failures.csv`` has the key), never by
its path (folders are often named after the patient) or an error's text.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import iter_pixels
from tqdm import tqdm

from niffler.common.atomic import atomic_write, write_bytes_atomic
from niffler.common.deid import Policy, deidentify_to_dict, load_secret, phi_check, tag_of_key
from niffler.common.errors import ConfigError, InputError
from niffler.common.featureset import Featureset, load_featureset
from niffler.common.ledger import Ledger, State
from niffler.common.logsetup import configure_worker
from niffler.common.notify import send_completion
from niffler.png_extraction.config import PngConfig
from niffler.png_extraction.render import RenderOptions, UnsupportedImage, encode_png, render_frame
from niffler.png_extraction.scrub import (
    EngineUnavailable,
    ScrubError,
    ScrubOptions,
    check_engine,
    scrub_frame,
)

__all__ = [
    "LEDGER_NAME",
    "NAMESPACE",
    "REASONS",
    "BatchSummary",
    "Converter",
    "DaskExecutor",
    "FileResult",
    "HeaderOptions",
    "InlineExecutor",
    "PoolExecutor",
    "check_dicom_home",
    "discover",
    "run",
    "run_batch",
    "write_outputs",
]

log = logging.getLogger(__name__)

NAMESPACE = "png.files"
LEDGER_NAME = ".niffler-png-progress.sqlite"
IMAGES = "extracted-images"
FAILED = "failed-dicom"
#: Failure reasons, named (upstream numbered them).
REASONS = (
    "not-dicom",
    "unreadable-header",
    "no-pixel-data",
    "decode-error",
    "unsupported-photometric",
    "deidentification-error",
    "pixel-scrub-error",
    "write-error",
    "unexpected-error",
    "worker-crash",
)
#: Files Niffler itself writes (niffler-cold's reports, niffler-png's CSVs): never DICOM, never listed.
NIFFLER_OUTPUTS = frozenset(
    {"retrieval-report.csv", "cfind-output.csv", "metadata.csv", "mapping.csv", "failures.csv"}
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: text_regions_redacted: rectangles blanked in the pixels (detected text and configured regions, all
#: frames); empty when the image was not scrubbed (ScrubBurnedInText off, or auto and not at risk).
_FIXED_COLUMNS = ("instance_key", "png_paths", "frames", "text_regions_redacted")
_COMMON_SHARE = 0.9
_MAX_ERROR = 500
_DISCOVERY_PAGE = 5000
#: Ledger entries read per query when writing the CSVs (bounds their memory).
_CSV_PAGE = 500


@dataclass(frozen=True)
class FileResult:
    """What converting one file gave: a de-identified row and PNGs, or a named failure."""

    relpath: str
    instance_key: str
    row: dict[str, Any] | None = None
    pngs: tuple[str, ...] = ()
    reason: str | None = None
    error: str | None = None
    #: The type of the exception behind a failure ("" when Niffler found the problem itself): the
    #: log names only this, as *error* (for failures.csv) may quote a path or a header value.
    cause: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


class _Failure(Exception):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]


@dataclass(frozen=True)
class Converter:
    """Everything a worker needs to convert a file; picklable, so it ships to any pool."""

    dicom_home: Path
    output: Path
    policy: Policy
    render: RenderOptions = field(default_factory=RenderOptions)
    level: str = "patient"
    print_images: bool = True
    scrub: ScrubOptions = field(default_factory=ScrubOptions)

    def convert_batch(self, relpaths: list[str]) -> list[FileResult]:
        """Convert several files (one task, to amortise the trip to a worker)."""
        return [self.convert(relpath) for relpath in relpaths]

    def convert(self, relpath: str) -> FileResult:
        """Convert one file; never raises: a failure comes back as a FileResult with its reason."""
        source = self.dicom_home / relpath
        key = self.policy.pseudonymizer.identifier("NifflerFile", relpath)
        try:
            ds = _read(source)
            sop = str(ds.get("SOPInstanceUID", "") or "")
            key = self.policy.pseudonymizer.identifier("NifflerInstance", f"{sop}\0{relpath}")
            row = self._row(ds)
            if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
                raise _Failure("no-pixel-data", "the file holds no Pixel Data")
            pngs, redacted = self._write_pngs(ds, key) if self.print_images else ([], None)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            row = {"instance_key": key, "png_paths": ";".join(pngs), "frames": frames,
                   "text_regions_redacted": redacted, **row}  # fmt: skip
            return FileResult(relpath, key, row=row, pngs=tuple(pngs))
        except _Failure as failure:
            cause = type(failure.__cause__).__name__ if failure.__cause__ is not None else ""
            return self._failed(source, relpath, key, failure.reason, str(failure), cause)
        except Exception as exc:  # never stop the batch; name what happened
            return self._failed(source, relpath, key, "unexpected-error", _describe(exc), type(exc).__name__)

    def _row(self, ds: pydicom.Dataset) -> dict[str, Any]:
        try:
            record = deidentify_to_dict(ds, self.policy)
        except Exception as exc:
            raise _Failure("deidentification-error", _describe(exc)) from exc
        problems = phi_check(record.values, self.policy)
        if problems:  # cannot happen by construction; never write it if it does
            raise _Failure("deidentification-error", f"the policy forbids {len(problems)} attribute(s)")
        return record.values

    def folder(self, ds: pydicom.Dataset) -> str:
        """Return the pseudonymous folder (relative to the output) for a dataset at this level."""
        pseudo = self.policy.pseudonymizer
        parts = [IMAGES, pseudo.identifier("PatientID", str(ds.get("PatientID", "") or ""))]
        if self.level in ("study", "series"):
            parts.append(pseudo.identifier("StudyInstanceUID", str(ds.get("StudyInstanceUID", "") or "")))
        if self.level == "series":
            parts.append(pseudo.identifier("SeriesInstanceUID", str(ds.get("SeriesInstanceUID", "") or "")))
        return "/".join(parts)

    def _write_pngs(self, ds: pydicom.Dataset, key: str) -> tuple[list[str], int | None]:
        """Return the PNGs written and the rectangles blanked (None: not scrubbed), scrubbing first."""
        folder = self.folder(ds)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        scrubbing = self.scrub.applies(ds)
        redacted = 0
        names: list[str] = []
        try:
            for index, pixels in enumerate(_frames(ds, frames)):
                image = render_frame(pixels, ds, self.render, index)
                if scrubbing:
                    scrubbed = scrub_frame(image, ds, self.scrub)
                    image, redacted = scrubbed.image, redacted + scrubbed.regions
                name = f"{folder}/{key}.png" if frames == 1 else f"{folder}/{key}_{index + 1:04d}.png"
                write_bytes_atomic(self.output / name, encode_png(image))
                names.append(name)
        except ScrubError as exc:
            for name in names:  # scrubbed, but a file is converted whole or not at all
                (self.output / name).unlink(missing_ok=True)
            raise _Failure("pixel-scrub-error", str(exc)) from exc
        except UnsupportedImage as exc:
            raise _Failure("unsupported-photometric", str(exc)) from exc
        except OSError as exc:
            raise _Failure("write-error", _describe(exc)) from exc
        return names, redacted if scrubbing else None

    def _failed(
        self, source: Path, relpath: str, key: str, reason: str, error: str, cause: str = ""
    ) -> FileResult:
        target = self.output / FAILED / reason / relpath
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.unlink()
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        except OSError as exc:
            error = f"{error} (and the copy to {FAILED}/ failed: {exc.strerror})"
        return FileResult(relpath, key, reason=reason, error=error[: _MAX_ERROR * 2], cause=cause)


def _read(source: Path) -> pydicom.Dataset:
    """Read a whole file, or raise _Failure saying whether it is not DICOM or is broken."""
    try:
        ds = pydicom.dcmread(source)
        if not len(ds):
            raise _Failure("unreadable-header", "the file ends before its first data element (truncated?)")
        return ds
    except _Failure:
        raise
    except InvalidDicomError:
        pass  # no DICM preamble: maybe a preamble-less file, decided below
    except Exception as exc:
        raise _Failure("unreadable-header", _describe(exc)) from exc
    try:
        ds = pydicom.dcmread(source, force=True)
        if "SOPClassUID" in ds or "PixelData" in ds:
            return ds
    except Exception:  # noqa: S110 - any parse error here means "not DICOM"
        pass
    raise _Failure("not-dicom", "no DICM preamble and no readable DICOM header")


def _frames(ds: pydicom.Dataset, frames: int) -> Iterator[np.ndarray]:
    """Yield the decoded frames of *ds* one at a time (colour already RGB)."""
    try:
        if frames == 1:
            pixels = ds.pixel_array
            yield pixels[0] if pixels.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1 else pixels
            return
        yield from iter_pixels(ds)
    except OSError:
        raise
    except Exception as exc:
        raise _Failure("decode-error", _describe(exc)) from exc



# --- discovery -------------------------------------------------------------------------------


def discover(root: Path, depth: int | None = None, exclude: Iterable[Path] = ()) -> Iterator[str]:
    """Yield the paths (relative to *root*, POSIX form) of regular files under it, in sorted order.

    With *depth*, only files exactly that many folders below *root*. Folders
    in *exclude* (the output, when it is inside DICOMHome) and hidden entries
    are skipped.
    """
    skip = {p.resolve() for p in exclude}

    def walk(folder: Path, level: int) -> Iterator[str]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list a folder under DICOMHome (%s); skipped", exc.strerror)
            return
        for entry in entries:
            if entry.name.startswith(".") or entry.name in NIFFLER_OUTPUTS:
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if path.resolve() not in skip and (depth is None or level < depth):
                    yield from walk(path, level + 1)
            elif entry.is_file() and (depth is None or level == depth):
                yield path.relative_to(root).as_posix()

    yield from walk(root, 0)


def _pages(items: Iterable[str], size: int) -> Iterator[list[str]]:
    page: list[str] = []
    for item in items:
        page.append(item)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


# --- executors ---------------------------------------------------------------------------------


class Executor(Protocol):
    """What the batch needs of a pool: submit a call, wait for any of the calls in flight."""

    workers: int

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def wait_any(self, futures: set[Any]) -> set[Any]: ...

    def recover(self) -> None: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Runs each call at once in this process (UseProcesses = 1; also what tests measure)."""

    workers = 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # a Ctrl-C (or SIGTERM) stops the batch now, not batches later
            future.set_exception(exc)
        return future

    def wait_any(self, futures: set[Any]) -> set[Any]:
        return set(futures)

    def recover(self) -> None:
        pass

    def close(self) -> None:
        pass


class PoolExecutor:
    """A local process pool (spawned workers: no inherited locks or connections).

    Each worker starts with this process's logging set-up (at *level*, by
    default this process's): a spawned process has none, and pydicom's
    defaults quote DICOM values in its warnings.
    """

    def __init__(self, workers: int, level: int | None = None) -> None:
        self.workers = workers
        self._level = _level(level)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=get_context("spawn"),
            initializer=configure_worker,
            initargs=(self._level,),
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._pool.submit(fn, *args)

    def wait_any(self, futures: set[Any]) -> set[Any]:
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        return set(done)

    def recover(self) -> None:
        """Replace the pool if a worker died (a broken pool refuses every new task)."""
        try:
            self._pool.submit(int).result()
        except BrokenExecutor:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- the batch ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderOptions:
    """Which metadata columns are written (upstream's three header switches)."""

    public_only: bool = True
    common_only: bool = False
    featureset: Featureset | None = None


@dataclass
class BatchSummary:
    """What a run did."""

    discovered: int = 0
    converted: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    already_done: int = 0
    #: DICOM files that failed in an earlier run and were not retried: they still fail.
    failed_earlier: int = 0
    done_earlier: int = 0
    pngs: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        """Return the summary as a few lines (counts only: safe for logs and e-mail)."""
        lines = [
            f"files found: {self.discovered}",
            f"converted now: {self.converted} ({self.pngs} PNG(s)) in {self.seconds:.1f} s",
            f"done or failed in an earlier run: {self.already_done}",
        ]
        lines += [f"failed, {reason}: {count}" for reason, count in sorted(self.failed.items())]
        if self.failed_earlier:
            lines.append(f"failed in an earlier run, not retried: {self.failed_earlier} (--retry-failed)")
        return "\n".join(lines)

    @property
    def saw_dicom(self) -> bool:
        """Whether any file under DICOMHome was DICOM, in this run or an earlier one."""
        return bool(self.converted or self.failed_dicom or self.failed_earlier or self.done_earlier)

    @property
    def failed_dicom(self) -> int:
        """Failures of files that are DICOM (a non-DICOM file in DICOMHome is not a failed conversion)."""
        return sum(n for reason, n in self.failed.items() if reason != "not-dicom")


def _worker_died(exc: BaseException) -> bool:
    """Whether a batch failed because its worker process died (a crash in a codec, the OOM killer)."""
    return isinstance(exc, BrokenExecutor) or type(exc).__name__ == "KilledWorker"  # Dask's


def _crashed(relpath: str, cause: str) -> FileResult:
    """The result of a file whose conversion killed the worker process, every time it was tried."""
    return FileResult(
        relpath, "", reason="worker-crash", error="the worker process died converting this file", cause=cause
    )


def _batch_function(converter: Converter, relpaths: list[str]) -> list[FileResult]:
    return converter.convert_batch(relpaths)


def _level(level: int | None) -> int:
    """*level*, or by default the level this process logs at (what its workers should log at)."""
    return logging.getLogger().getEffectiveLevel() if level is None else level


def _configured_call(level: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run *fn* on a worker set up like the command first (a Dask task: idempotent, so every time)."""
    configure_worker(level)
    return fn(*args)


def _log_failures(results: list[FileResult], first: int, total: int) -> None:
    """Name each failure by its position in this run and its keyed name: never its path or error text."""
    for position, result in enumerate(results, start=first):
        if not result.ok:
            log.debug(
                "file %d of %d (instance %s) failed: %s%s",
                position, total, result.instance_key, result.reason,
                f" ({result.cause})" if result.cause else "",
            )  # fmt: skip


def run_batch(
    converter: Converter,
    executor: Executor,
    *,
    depth: int | None = None,
    headers: HeaderOptions | None = None,
    chunks: int = 1,
    fresh: bool = False,
    retry_failed: bool = False,
    batch_size: int = 16,
    show_progress: bool | None = None,
    converter_ref: Any = None,
) -> BatchSummary:
    """Convert every pending file under the converter's DICOMHome and write the CSVs.

    *converter_ref* is what is passed to the workers in place of the
    converter (a Dask cluster gets it scattered once); by default the
    converter itself.
    """
    started = time.monotonic()
    output = converter.output
    output.mkdir(parents=True, exist_ok=True)
    headers = headers or HeaderOptions()
    summary = BatchSummary()
    with Ledger(output / LEDGER_NAME) as ledger:
        if fresh:
            ledger.reset(NAMESPACE)
            shutil.rmtree(output / FAILED, ignore_errors=True)
        for page in _pages(discover(converter.dicom_home, depth, exclude=[output]), _DISCOVERY_PAGE):
            ledger.add(NAMESPACE, page)
        if retry_failed:
            log.info("retrying %d failed file(s)", ledger.requeue(NAMESPACE, State.FAILED))
        summary.failed_earlier = sum(
            1
            for entry in ledger.stream(NAMESPACE, State.FAILED)
            if (entry.detail or {}).get("reason") != "not-dicom"
        )
        counts = ledger.counts(NAMESPACE)
        summary.discovered = sum(counts.values())
        summary.already_done = counts[State.DONE] + counts[State.FAILED]
        summary.done_earlier = counts[State.DONE]
        pending = counts[State.PENDING]
        log.info(
            "%d file(s) under DICOMHome: %d to convert, %d done or failed in an earlier run",
            summary.discovered, pending, summary.already_done,
        )  # fmt: skip
        checkpoint = max(1, -(-pending // chunks)) if chunks > 1 else 0
        progress = tqdm(
            total=pending,
            unit="file",
            disable=not (sys.stderr.isatty() if show_progress is None else show_progress),
        )
        handled = 0
        next_log = time.monotonic() + 30
        ref = converter if converter_ref is None else converter_ref
        in_flight: dict[Any, tuple[list[str], bool]] = {}  # future -> (its files, ran alone?)
        #: Files of batches whose worker process died: each is retried with nothing else in flight,
        #: so the one that kills its worker is known and the others are converted.
        suspects: list[str] = []
        window = max(2, 4 * executor.workers)
        batches = _pages((e.key for e in ledger.stream(NAMESPACE, State.PENDING)), batch_size)
        try:
            while True:
                if suspects:
                    if not in_flight:
                        suspect = [suspects.pop()]
                        in_flight[executor.submit(_batch_function, ref, suspect)] = (suspect, True)
                else:
                    while len(in_flight) < window:
                        batch = next(batches, None)
                        if batch is None:
                            break
                        in_flight[executor.submit(_batch_function, ref, batch)] = (batch, False)
                if not in_flight:
                    break
                for future in executor.wait_any(set(in_flight)):
                    batch, alone = in_flight.pop(future)
                    try:
                        results: list[FileResult] = future.result()
                    except Exception as exc:
                        if not _worker_died(exc):
                            raise
                        executor.recover()
                        if not alone:
                            suspects.extend(batch)
                            continue
                        log.error("a worker process died converting one file; it is listed as worker-crash")
                        results = [_crashed(batch[0], type(exc).__name__)]
                    _record(ledger, results, summary)
                    _log_failures(results, handled + 1, pending)
                    before, handled = handled, handled + len(results)
                    progress.update(len(results))
                    if checkpoint and before // checkpoint != handled // checkpoint and handled < pending:
                        write_outputs(ledger, output, headers, converter.dicom_home)
                    if progress.disable and time.monotonic() >= next_log:
                        log.info("%d of %d file(s) handled", handled, pending)
                        next_log = time.monotonic() + 30
        except KeyboardInterrupt:
            progress.close()
            for future in in_flight:  # a pool starts no further batch while the CSVs are written
                future.cancel()
            log.warning("interrupted: writing the CSVs of the %d file(s) done; run the same command "
                        "again to convert the rest", summary.converted + summary.done_earlier)  # fmt: skip
            write_outputs(ledger, output, headers, converter.dicom_home)
            raise
        finally:
            progress.close()
            for future in in_flight:
                future.cancel()
        write_outputs(ledger, output, headers, converter.dicom_home)
    summary.seconds = time.monotonic() - started
    return summary


def _record(ledger: Ledger, results: list[FileResult], summary: BatchSummary) -> None:
    changes: list[tuple[str, State, str | None, dict[str, Any] | None]] = []
    for result in results:
        if result.ok:
            summary.converted += 1
            summary.pngs += len(result.pngs)
            changes.append((result.relpath, State.DONE, None, {"row": result.row, "pngs": list(result.pngs)}))
        else:
            assert result.reason is not None
            summary.failed[result.reason] += 1
            changes.append(
                (
                    result.relpath,
                    State.FAILED,
                    result.error,
                    {"reason": result.reason, "key": result.instance_key},
                )
            )
    ledger.mark_many(NAMESPACE, changes)


# --- the CSVs ----------------------------------------------------------------------------------


def _column_order(key: str) -> tuple[int, str]:
    """Sort key of a metadata column: the tag of its top-level attribute, then the name."""
    tag = tag_of_key(key.split("_", 1)[0])
    return (tag if tag is not None else 0xFFFFFFFF, key)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(_cell(v) for v in value)
    return str(value)


def _select(row: dict[str, Any], headers: HeaderOptions) -> dict[str, Any]:
    if headers.featureset is not None:
        kept = headers.featureset.select(row)
        return {**{k: row[k] for k in _FIXED_COLUMNS if k in row}, **kept}
    if headers.public_only:
        return {k: v for k, v in row.items() if not _is_private(k)}
    return row


def _is_private(key: str) -> bool:
    tag = tag_of_key(key.split("_", 1)[0])
    return tag is not None and bool((tag >> 16) & 1)


def write_outputs(
    ledger: Ledger, output: Path, headers: HeaderOptions, dicom_home: Path | None = None
) -> None:
    """Write metadata.csv, mapping.csv and failures.csv from the ledger, a page at a time.

    mapping.csv and failures.csv name the original files by their full path
    (under *dicom_home* when given, else relative to it).
    """

    def original(key: str) -> str:
        return str(dicom_home / key) if dicom_home is not None else key

    counts: Counter[str] = Counter()
    rows = 0
    for entry in ledger.stream(NAMESPACE, State.DONE, _CSV_PAGE):
        rows += 1
        counts.update(
            k for k, v in _select(entry.detail.get("row") or {}, headers).items() if v not in (None, "")
        )
    columns = [c for c in counts if c not in _FIXED_COLUMNS]
    if headers.common_only:
        columns = [c for c in columns if counts[c] >= _COMMON_SHARE * rows]
    fieldnames = [*_FIXED_COLUMNS, *sorted(columns, key=_column_order)]
    wanted = set(fieldnames)
    # One pass over the ledger writes both files: each entry's JSON is decoded once.
    with (
        atomic_write(output / "metadata.csv") as meta_handle,
        atomic_write(output / "mapping.csv") as map_handle,
    ):
        writer = csv.DictWriter(meta_handle, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        lines = csv.writer(map_handle, lineterminator="\n")
        lines.writerow(["dicom_path", "png_path", "instance_key"])
        for entry in ledger.stream(NAMESPACE, State.DONE, _CSV_PAGE):
            row = entry.detail.get("row") or {}
            writer.writerow({k: _cell(v) for k, v in row.items() if k in wanted})
            for png in entry.detail.get("pngs") or [""]:
                lines.writerow([original(entry.key), png, row.get("instance_key", "")])
    with atomic_write(output / "failures.csv") as handle:
        lines = csv.writer(handle, lineterminator="\n")
        lines.writerow(["file", "reason", "error", "copied_to", "instance_key"])
        for entry in ledger.stream(NAMESPACE, State.FAILED, _CSV_PAGE):
            reason = entry.detail.get("reason", "unexpected-error")
            lines.writerow([
                original(entry.key), reason, entry.last_error or "", f"{FAILED}/{reason}/{entry.key}",
                entry.detail.get("key", ""),
            ])  # fmt: skip


def check_dicom_home(path: Path | None) -> Path:
    """Return DICOMHome, or raise InputError if it is unset or not a folder."""
    if path is None:
        raise InputError("DICOMHome is not set: give --dicom-home or set it in the config")
    if not path.is_dir():
        raise InputError(f"DICOMHome {str(path)!r} is not a folder")
    return path


class DaskExecutor:
    """A Dask cluster (``--dask-scheduler``): the same per-file function, on other machines.

    The workers must see DICOMHome and the output directory at the same paths
    (a shared file system). The converter, which holds the site secret, is
    scattered to the workers once. Every task first sets its worker up like
    this command (logging at *level*, by default this process's; pydicom
    quoting no values): a Dask worker is long-lived and may be shared.
    """

    def __init__(self, address: str, level: int | None = None) -> None:
        self._level = _level(level)
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError(
                "--dask-scheduler needs the 'distributed' extra: pip install 'niffler[distributed]'"
            ) from None
        try:
            self._client = Client(address, timeout="20s")
        except OSError as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        self.workers = max(1, sum(self._client.nthreads().values()))

    def scatter(self, value: Any) -> Any:
        return self._client.scatter(value, broadcast=True)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._client.submit(_configured_call, self._level, fn, *args, pure=False)

    def wait_any(self, futures: set[Any]) -> set[Any]:
        from distributed import wait as dask_wait

        done, _ = dask_wait(list(futures), return_when="FIRST_COMPLETED")
        return set(done)

    def recover(self) -> None:
        """Nothing to do: Dask replaces a worker that died."""

    def close(self) -> None:
        self._client.close()


def _check_scrubbing(scrub: ScrubOptions, print_images: bool) -> None:
    """Raise ConfigError if the policy may need the text detector and it is not installed."""
    if not print_images:
        return
    if scrub.policy == "off":
        log.warning("ScrubBurnedInText is off: text burned into the pixels (names, MRNs and dates on "
                    "ultrasound and screen captures) is written to the PNGs as it is")  # fmt: skip
        return
    try:
        check_engine()
    except EngineUnavailable as exc:
        raise ConfigError(f"ScrubBurnedInText is {scrub.policy}: {exc}") from None


def run(
    config: PngConfig,
    *,
    fresh: bool = False,
    retry_failed: bool = False,
    dask_scheduler: str | None = None,
    show_progress: bool | None = None,
) -> BatchSummary:
    """Run the batch a config describes (the whole of ``niffler-png``)."""
    dicom_home = check_dicom_home(config.DICOMHome)
    # One onnxruntime thread per worker process, all cores when converting in this process.
    inline = config.UseProcesses == 1 and not dask_scheduler
    scrub = config.scrub_options(threads=(os.cpu_count() or 1) if inline else 1)
    _check_scrubbing(scrub, config.PrintImages)
    policy = Policy(config, load_secret(config.DeidKeyFile or None, config.StateFolder))
    converter = Converter(
        dicom_home=dicom_home.resolve(),
        output=config.OutputDirectory.resolve(),
        policy=policy,
        render=config.render_options(),
        level=config.FlattenedToLevel,
        print_images=config.PrintImages,
        scrub=scrub,
    )
    headers = HeaderOptions(
        public_only=config.PublicHeadersOnly,
        common_only=config.CommonHeadersOnly,
        featureset=load_featureset(config.FeaturesetFile) if config.SpecificHeadersOnly else None,
    )
    executor: Executor
    ref: Any = None
    if dask_scheduler:
        dask = DaskExecutor(dask_scheduler)
        executor, ref = dask, dask.scatter(converter)
    elif config.UseProcesses == 1:
        executor = InlineExecutor()
    else:
        executor = PoolExecutor(config.UseProcesses or os.cpu_count() or 1)
    log.info(
        "converting with %d worker(s); de-identification: %s; burned-in text: %s, %d region rule(s)",
        executor.workers, policy.describe(), scrub.policy, len(scrub.regions),
    )  # fmt: skip
    try:
        summary = run_batch(
            converter,
            executor,
            depth=config.Depth,
            headers=headers,
            chunks=config.SplitIntoChunks,
            fresh=fresh,
            retry_failed=retry_failed,
            show_progress=show_progress,
            converter_ref=ref,
        )
    finally:
        executor.close()
    if config.SendEmail:
        send_completion(config.YourEmail, "niffler-png finished", summary.describe())
    return summary
