"""What a person sees: our own lines, one progress bar, one-line errors; everything else to a log file.

At default verbosity ``aim-video`` prints the lines it writes itself (ingest summaries, a line per
epoch, a line per finished trial, the result, where to look next) and shows one progress bar for
long work. Ray's and MLflow's own logging, and Python warnings, go to the command's log file; with
``-v`` they go to the console as well, and Ray workers' output is forwarded to it.

Until a command knows where its run lives (:func:`log_to`), records are held in memory; a command
that never says writes them to ``aim_runs/logs/<command>-<time>.log`` when it ends.
"""

from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Iterator

LOG_FILE = "aim-video.log"
DEFAULT_LOG_DIR = Path("aim_runs") / "logs"
# Loggers of the libraries we run, which install their own console handlers.
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "mlflow", "py.warnings")
OUR_LOGGERS = ("aim_core", "pipelines")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _LogStream:
    """What libraries print to ``sys.stdout`` / ``sys.stderr`` during a quiet command: each line
    becomes a log record (Ray's and Tune's prints, MLflow's ``Successfully registered model``)."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(f"console.{name}")
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                self._logger.info(line.rstrip())
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # No descriptor: what io streams without one raise (Ray's faulthandler.enable in
        # ray.init expects it; an AttributeError there failed every quiet command starting Ray).
        raise io.UnsupportedOperation("fileno")


class _State:
    verbose = False
    command = "aim-video"
    buffer: logging.handlers.MemoryHandler | None = None
    file: logging.FileHandler | None = None
    console: logging.Handler | None = None
    out = err = None      # a command's real streams (our lines, errors, the bar); None: sys's
    bar = None            # the one progress bar on screen, if any


def start(command: str, verbose: bool) -> None:
    """Set up logging for one command: ours at WARNING to the console, everything to the log."""
    _reset()
    _State.verbose, _State.command = verbose, command
    _State.out, _State.err = sys.stdout, sys.stderr
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)
    _State.buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    _State.buffer.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(_State.buffer)
    console = _State.console = logging.StreamHandler(_State.err)
    console.setFormatter(logging.Formatter(_FORMAT if verbose else "%(levelname)s: %(message)s"))
    if verbose:
        root.addHandler(console)
    else:
        console.setLevel(logging.WARNING)
        for name in OUR_LOGGERS:
            logging.getLogger(name).addHandler(console)
            logging.getLogger(name).propagate = True
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", str(verbose).lower())
    if not verbose:
        sys.stdout, sys.stderr = _LogStream("stdout"), _LogStream("stderr")
    capture_library_logs()


def verbose() -> bool:
    return _State.verbose


def streams() -> tuple:
    """The real ``(stdout, stderr)`` of the command, for our own output."""
    return _State.out or sys.stdout, _State.err or sys.stderr


def capture_library_logs() -> None:
    """Send the console output of the libraries already imported to our log (idempotent).

    Ray and MLflow attach console handlers to their loggers when they are imported, so this runs
    again after they are (:func:`pipelines.runtime.ensure_ray`, MLflow's configuration).
    """
    if _State.verbose or _State.buffer is None:
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is not logging.FileHandler and isinstance(
                    handler, logging.StreamHandler) and not hasattr(handler, "baseFilename"):
                logger.removeHandler(handler)
        if _target() not in logger.handlers and not logger.propagate:
            logger.addHandler(_target())


def _target() -> logging.Handler:
    return _State.file or _State.buffer


def log_to(folder: str | Path) -> Path:
    """Write this command's log to ``<folder>/aim-video.log`` (appending: a resumed run keeps one
    log); what was held in memory so far goes there first. The first caller decides (the demo's
    log holds both of its runs). Returns the file's path."""
    if _State.file is not None:
        return Path(_State.file.baseFilename)
    path = Path(folder).expanduser().resolve() / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.DEBUG)
    _switch_to(handler)
    return path


def _switch_to(handler: logging.FileHandler) -> None:
    previous = _target()
    for name in ("", *LIBRARY_LOGGERS):
        logger = logging.getLogger(name)
        if previous in logger.handlers:
            logger.removeHandler(previous)
            logger.addHandler(handler)
    if _State.buffer is not None:
        _State.buffer.setTarget(handler)
        _State.buffer.flush()
        _State.buffer.close()
        _State.buffer = None
    if _State.file is not None:
        _State.file.close()
    _State.file = handler


def log_path() -> Path | None:
    return Path(_State.file.baseFilename) if _State.file is not None else None


def finish() -> Path | None:
    """At the end of a command: make sure what was logged is on disk; returns the log's path."""
    if _State.file is None and _State.buffer is not None and _State.buffer.buffer:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = (DEFAULT_LOG_DIR / f"{_State.command}-{stamp}-{os.getpid()}.log").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FORMAT))
        _switch_to(handler)
    path = log_path()
    _reset()
    return path


def _reset() -> None:
    """Detach this module's handlers and give the streams back (a process may run several
    commands, as tests do)."""
    if isinstance(sys.stdout, _LogStream):
        sys.stdout = _State.out
    if isinstance(sys.stderr, _LogStream):
        sys.stderr = _State.err
    _State.out = _State.err = None
    ours = [h for h in (_State.buffer, _State.file, _State.console) if h is not None]
    for name in ("", *LIBRARY_LOGGERS, *OUR_LOGGERS):
        logger = logging.getLogger(name)
        for handler in ours:
            if handler in logger.handlers:
                logger.removeHandler(handler)
    for handler in ours:
        handler.close()
    _State.buffer = _State.file = _State.console = None


# ----------------------------------------------------------------------------------------------
# Our own lines and the progress bar
# ----------------------------------------------------------------------------------------------

def say(text: str) -> None:
    """Print one of our lines (above the progress bar when one is shown); logged too."""
    logging.getLogger("pipelines.console").debug(text)
    out = _State.out or sys.stdout
    if _State.bar is not None:
        _State.bar.write(text, file=out)
    else:
        print(text, file=out, flush=True)


def error(text: str) -> None:
    """Print one of our error lines to the real standard error."""
    logging.getLogger("pipelines.console").debug(text)
    print(text, file=_State.err or sys.stderr, flush=True)


@contextlib.contextmanager
def progress(total: int | None, what: str) -> Iterator["Progress"]:
    """One progress bar (on a terminal only: in a log or a pipe it would be noise)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=what, unit="", leave=False, dynamic_ncols=True,
               disable=None if not _State.verbose else True, file=_State.err or sys.stderr)
    outer, _State.bar = _State.bar, bar
    try:
        yield Progress(bar)
    finally:
        bar.close()
        _State.bar = outer


def advance(n: int = 1) -> None:
    """Move the bar on screen, if there is one (callbacks that cannot hold a bar use this)."""
    if _State.bar is not None:
        _State.bar.update(n)


class Progress:
    def __init__(self, bar) -> None:
        self._bar = bar

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)

    def describe(self, text: str) -> None:
        self._bar.set_postfix_str(text, refresh=True)
