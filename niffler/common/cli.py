"""The edge every console command shares: logging set-up and error handling.

Only ``cli.py`` files call this. Logs go to stderr with %-style arguments;
-v/-q move the level. A :class:`~niffler.common.errors.NifflerError` becomes
one line on stderr and its exit code; a Ctrl-C exits 130, and so does a
SIGTERM inside :func:`sigterm_interrupts`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from niffler import __version__
from niffler.common.errors import NifflerError
from niffler.common.logsetup import configure_process, level_for

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_SOME_FAILED",
    "EXIT_SUCCESS",
    "NifflerCommand",
    "NifflerGroup",
    "fail_cleanly",
    "logging_options",
    "setup_logging",
    "sigterm_interrupts",
]

#: The exit codes of every Niffler command.
EXIT_SUCCESS = 0
#: A configuration, usage or environment error (bad key, bad option, unreachable peer, full disk).
EXIT_FAILED = 1
#: Some rows or files failed, or still fail after a resume.
EXIT_SOME_FAILED = 2
EXIT_INTERRUPTED = 130
EXIT_CODES_HELP = (
    "Exit codes: 0 all done; 1 configuration, usage or environment error; "
    "2 some rows or files failed, or still fail after a resume; 130 interrupted."
)

F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(verbose: int = 0, quiet: int = 0) -> None:
    """Configure the root logger on stderr: INFO by default, -v DEBUG, -q WARNING.

    The same set-up as the command's workers get (:mod:`niffler.common.logsetup`):
    pydicom's value checks off and no library quoting a DICOM value in the log.
    """
    configure_process(level_for(verbose, quiet), dicom_traffic=verbose > 1)
    logging.getLogger(__name__).debug("niffler %s, pid %d", __version__, os.getpid())


def logging_options(prog_name: str) -> Callable[[F], F]:
    """Add the options every command shares: -v/--verbose, -q/--quiet (counted) and --version."""

    def decorate(func: F) -> F:
        func = click.version_option(__version__, prog_name=prog_name)(func)
        func = click.option("-q", "--quiet", count=True, help="less logging")(func)
        return click.option("-v", "--verbose", count=True, help="more logging (-vv: DICOM traffic too)")(func)

    return decorate


class _ExitContract:
    """Make click's own errors follow Niffler's exit codes (click exits 2 on a usage error)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)  # type: ignore[misc]
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_FAILED)


class NifflerCommand(_ExitContract, click.Command):
    """A click command with Niffler's exit codes (:data:`EXIT_CODES_HELP`)."""


class NifflerGroup(_ExitContract, click.Group):
    """A click group with Niffler's exit codes (:data:`EXIT_CODES_HELP`)."""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM stops the command as Ctrl-C does: progress kept, exit 130.

    SIGTERM is what systemd, ``docker stop`` and ``kill`` send. Python's default
    ends the process on the spot: no ``finally``, no temp file removed, no
    report written, exit status -15. The previous handler is restored after
    the block (a command run in a test leaves the test process as it was).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set a signal handler
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fail_cleanly(func: F) -> F:
    """Wrap a click command so NifflerError prints one line and exits non-zero."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NifflerError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except OSError as exc:  # the file system refused: one line, never a traceback
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or type(exc).__name__}{where}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper  # type: ignore[return-value]
