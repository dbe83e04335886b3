"""A per-file time limit on reading PDFs, enforced from outside the process that reads them.

MuPDF's C code can loop for ever on a malformed file, and a Python signal cannot interrupt C code (nor
can an alarm in the same process). So a shard's files are read by one child process, which takes one
file at a time over a pipe; the shard's own process waits at most `timeout_s` for each answer. A file
that runs over is counted and named, the child is killed with SIGKILL (which no loop can ignore) and
replaced, and the shard goes on with its next file. One child per shard, not one per file: starting
one costs a Python start and a PyMuPDF import, which a shard of small files would pay again and again.

The child writes a file's crops to a Parquet part itself, so images never cross the pipe (PNG bytes
are the bulk of the work) and one file's crops are the most any process holds at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pyarrow as pa

HANG_ENV = "DND_TEST_HANG_ON"  # test-only: the reader hangs (deaf to catchable signals) on the file of this name
STARTUP_TIMEOUT_S = 120.0  # a fresh reader must say it is ready within this (imports, not reading)


class _CollectLines(logging.Handler):
    """Keeps the reader's log lines of one file, to send them with its result."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def _hang_if_asked(pdf: str) -> None:
    """The test hook: behave like MuPDF looping in C, which only SIGKILL stops."""
    if os.environ.get(HANG_ENV) and Path(pdf).name == os.environ[HANG_ENV]:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGHUP})
        while True:
            time.sleep(3600)


def _die_with_parent() -> None:
    """Linux: the kernel kills the reader when the shard's process dies (killed, requeued): a reader
    looping in C would otherwise outlive it and burn a core for ever."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pipe's end of file still stops an idle reader
        pass
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def _reader_main(conn: Connection, raster: Any, schema: pa.Schema, source_root: str) -> None:
    """The child: rasterize each file it is sent into its part file; answer with counts and log lines."""
    from dnd.data.pdf import rasterize_pdf
    from dnd.data.shards import write_shard

    _die_with_parent()
    log = logging.getLogger("dnd.pdf.reader")
    log.propagate = False  # its lines travel with the answer and are logged by the shard's process
    log.setLevel(logging.INFO)
    lines = _CollectLines()
    log.addHandler(lines)
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        pdf, part = job
        _hang_if_asked(pdf)
        stats: Counter = Counter()
        lines.lines = []
        records = list(rasterize_pdf(Path(pdf), raster, stats, log))  # one file's crops at most
        source = os.path.relpath(pdf, source_root)
        for record in records:
            record["split"], record["source"] = "", source
        if records:
            write_shard(Path(part), records, schema)  # atomic: a killed reader leaves no half part
        paper_id = records[0]["paper_id"] if records else None
        conn.send({"file": pdf, "stats": dict(stats), "part": part if records else None, "paper_id": paper_id,
                   "images": len(records), "log": lines.lines})


def _start_method() -> str:
    """"fork" starts a reader in milliseconds where "spawn" pays a Python start and the imports again
    (seconds on a loaded node, per shard and per replaced reader). A shard's process holds no OpenMP/MKL
    thread pools, which a forked child could inherit half-locked; one that imported torch does: spawn."""
    return "spawn" if "torch" in sys.modules else "fork"


class WatchedReader:
    """Reads PDFs in a child process with a time limit per file; a context manager that stops its child."""

    def __init__(self, raster: Any, schema: pa.Schema, source_root: str, timeout_s: float, log: logging.Logger):
        self.args = (raster, schema, source_root)
        self.timeout_s = timeout_s
        self.log = log
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.killed_pids: list[int] = []

    def _start(self) -> None:
        context = multiprocessing.get_context(_start_method())
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=_reader_main, args=(child_end, *self.args), daemon=True)
        self.process.start()
        child_end.close()  # so a dead child reads as end of file here
        try:
            ready = self.conn.poll(STARTUP_TIMEOUT_S) and self.conn.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            exitcode = self.process.exitcode
            self._stop(kill=True)
            raise RuntimeError(f"the PDF reader process did not start within {STARTUP_TIMEOUT_S:g} s (exit code {exitcode})")

    def _stop(self, kill: bool) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process = self.conn = None

    def read(self, pdf: str, part: str) -> dict[str, Any]:
        """Rasterize `pdf` into `part`; on time-out or a crash of the reader, a result naming the reason."""
        if self.process is None:
            self._start()
        self.conn.send((pdf, part))
        reason = "timeout"
        if self.conn.poll(self.timeout_s):
            try:
                return self.conn.recv()
            except EOFError:
                reason = "reader_crashed"  # MuPDF can also abort the process (a segfault in C)
        pid, exitcode = self.process.pid, self.process.exitcode
        self._stop(kill=True)
        self.killed_pids.append(pid)
        if reason == "timeout":
            detail = f"no result within {self.timeout_s:g} s; killed reader process {pid}, a new one reads on"
        else:
            detail = f"the reader process {pid} died (exit code {exitcode}); a new one reads on"
        message = f"{pdf}: skipped file ({reason}): {detail}"
        return {"file": pdf, "stats": {f"skipped_file:{reason}": 1}, "part": None, "paper_id": None, "images": 0,
                "log": [(logging.WARNING, message)]}

    def __enter__(self) -> "WatchedReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
        self._stop(kill=False)
