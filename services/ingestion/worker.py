"""Parsing an upload where a crash cannot take the server down: a child process per upload.

The readers are native code (Arrow's CSV, JSON and Parquet parsers) fed with bytes an attacker
chose; a fault in them (a segmentation fault, an abort, memory exhaustion) would end the process
it runs in. So the parse, the validation, the protection and the Parquet write of one upload run
in a child forked for it, with an address-space limit, and the server only waits for the answer:

- the interface is files: the (encrypted) staging file in, one Parquet file out under a name the
  parent chose, so that the parent can remove it whatever became of the child;
- the child sends its progress (rows read) and then its result through a pipe; it touches no
  database connection (the parent's pool is inherited and left alone: the garbage collector is
  frozen across the fork so that no inherited connection is finalised in the child);
- a child that dies (a signal, an exit without an answer) or falls silent for too long is
  `ParserFailed`; the caller answers 422 "the file could not be read" and audits it.

Fork, not spawn or forkserver: the child starts in a millisecond or two with everything the
server has loaded (contracts, keys, pyarrow), and nothing needs pickling on the way in. The
child uses only what is safe after a fork from a threaded process: its own threads, pyarrow
(whose pools are reinitialised at fork), files, and the pipe. It dies with the server
(PR_SET_PDEATHSIG), so a killed server leaves no parser running.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from services.contracts.model import Contract
from services.contracts.protection import Protector
from services.contracts.validation import BatchValidator, Rule, ValidationReport, Violation
from services.storage.inputs import InputFormatError, InputLimits, open_input
from services.storage.models import UploadMode
from services.storage.service import ParquetVersionWriter, Storage, StoredFile
from services.storage.staging import StagedBody

log = logging.getLogger(__name__)

_PROGRESS_EVERY_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1
_M_MMAP_THRESHOLD = -3  # glibc mallopt
_MMAP_THRESHOLD_BYTES = 128 * 1024


@dataclass
class ParseJob:
    """Everything the child needs; inherited by the fork, never sent anywhere."""

    contract: Contract
    protector: Protector
    limits: InputLimits
    storage: Storage
    media_type: str
    charset: str | None
    mode: UploadMode
    body_path: Path
    staged: StagedBody | None
    # The current version's files, for an append's key check (read in the child).
    existing_files: tuple[Path, ...]
    # The stem of the Parquet file the child writes, chosen by the parent.
    output_name: str


@dataclass
class ParseResult:
    rows: int
    report: ValidationReport
    stored: StoredFile | None  # None when the upload was rejected


class ParserFailed(Exception):
    """The child parsing an upload died or stopped answering; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ParserIOError(OSError):
    """An OSError of the child (a full disk, most often), re-raised in the parent."""


def _prefetched(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Read the next batch on another thread while this one is validated (pyarrow releases the
    GIL while parsing, so the two overlap on separate cores)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-read") as pool:
        pending = pool.submit(next, batches, None)
        while True:
            batch = pending.result()
            if batch is None:
                return
            pending = pool.submit(next, batches, None)
            yield batch


def _clashes_with_current(
    contract: Contract,
    key_columns: list[str],
    upload_keys: pa.Table,
    existing_keys: pa.Table,
    report: ValidationReport,
) -> None:
    """On append, no row may repeat a key of the current version.

    Uniqueness within the upload is the validator's (it sees every batch); this adds the
    comparison with what is already stored.
    """

    def normalised(table: pa.Table, with_rows: bool) -> pa.Table:
        arrays = {}
        for name in key_columns:
            # Null is a value for key purposes: two rows with the same occurrence and no
            # suspect are the same key. A NUL sentinel cannot collide with real text.
            arrays[name] = pc.fill_null(table.column(name).cast(pa.string()), "\x00")
        if with_rows:
            arrays["_row"] = pa.array(range(1, table.num_rows + 1), pa.int64())
        return pa.table(arrays)

    upload = normalised(upload_keys, True)
    existing = normalised(existing_keys, False)
    hits = upload.join(existing, keys=key_columns, join_type="left semi").sort_by("_row")
    keys_label = ", ".join(contract.key)
    for row in hits.column("_row").to_pylist():
        report.add(
            Violation(
                row=row,
                field=keys_label,
                rule=Rule.DUPLICATE_KEY,
                message=f"the key ({keys_label}) already occurs in the current version",
            )
        )


def parse(job: ParseJob, progress: Callable[[int], None]) -> ParseResult:
    """Read, validate, protect and write one upload (in whichever process calls it).

    The file is read in batches; each batch is validated and, while the upload is still clean,
    protected and written. A rejected upload leaves no file; an accepted one is durable.
    """
    contract = job.contract
    report = ValidationReport()
    validator = BatchValidator(contract, job.protector)
    writer: ParquetVersionWriter | None = None
    rows = 0
    try:
        date_fields = frozenset(f.name for f in contract.fields if f.type.value == "date")
        limits = replace(job.limits, date_fields=date_fields)
        # A staged body is decrypted as the readers read it, a chunk at a time: never whole.
        body = job.body_path if job.staged is None else job.staged
        reader = open_input(body, job.media_type, limits, job.charset)
        usable = validator.check_header(list(reader.column_names), report)
        if not usable:
            reader.close()
        key_columns = validator.key_columns()
        key_parts: list[pa.Table] = []
        if usable:
            writer = job.storage.new_writer(
                contract.id, validator.stored_schema(), name=job.output_name
            )
            keep_keys = job.mode == UploadMode.APPEND
            for batch in _prefetched(reader.batches()):
                stored = validator.process(batch, rows + 1, report)
                rows += batch.num_rows
                if report.ok and stored is not None:
                    writer.write(stored)
                    if keep_keys:
                        key_parts.append(pa.Table.from_batches([stored]).select(key_columns))
                elif key_parts:
                    key_parts = []  # the upload is rejected; stop holding keys
                progress(rows)
            validator.finish(report)
            writer.flush()
        if report.ok and rows == 0:
            report.add(Violation(None, None, Rule.EMPTY, "the file has a header but no data rows"))
        if report.ok and job.mode == UploadMode.APPEND and key_parts and job.existing_files:
            existing = job.storage.read_columns(job.existing_files, key_columns)
            _clashes_with_current(
                contract, key_columns, pa.concat_tables(key_parts), existing, report
            )
            del existing
        del key_parts
    except InputFormatError as exc:
        report.add(Violation(exc.row, exc.field, Rule.FORMAT, exc.message))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if not report.ok:
        if writer is not None:
            writer.abort()
        return ParseResult(rows, report, None)
    assert writer is not None
    return ParseResult(rows, report, writer.finish())


# The child


def _die_with_parent() -> None:
    """Ask the kernel to kill this child when the thread that forked it ends (the server dies)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _limit_memory(budget: int) -> None:
    """Cap the child's address space at what it inherited plus `budget` bytes: a reader that
    tries to allocate beyond gets a MemoryError (or aborts), and only the child goes.

    Arrow's default allocator (mimalloc) reserves large arenas up front and serves from them
    without asking the kernel, which the limit would not see; the system allocator asks for
    each large buffer, so the child switches to it, with a fixed mmap threshold so that large
    buffers are always new mappings (counted by the limit) rather than reuse of heap the
    server had freed before the fork (which the limit cannot see either).
    """
    if budget <= 0:
        return
    pa.set_memory_pool(pa.system_memory_pool())
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    with open("/proc/self/statm") as handle:
        inherited = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = inherited + budget
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _child(job: ParseJob, sender: Connection, parent: int, memory_budget: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    _limit_memory(memory_budget)
    last = 0.0

    def progress(rows: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= _PROGRESS_EVERY_SECONDS:
            sender.send(("progress", rows))
            last = now

    message: tuple[Any, ...]
    try:
        message = ("done", parse(job, progress))
    except OSError as exc:
        message = ("oserror", exc.errno, str(exc))
    except MemoryError:
        message = ("failed", "the file needs more memory than an upload may use")
    except BaseException as exc:
        message = ("error", type(exc).__name__)
    with contextlib.suppress(OSError):
        sender.send(message)
        sender.close()


def run_isolated(
    job: ParseJob,
    *,
    beat: Callable[[], None],
    beat_every: float,
    memory_budget: int,
    silence_seconds: float,
) -> ParseResult:
    """Run `parse(job)` in a child process; `beat` is called every `beat_every` seconds meanwhile
    (the Idempotency-Key lease). Raises ParserFailed, ParserIOError, or RuntimeError (a bug)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child,
        args=(job, sender, os.getpid(), memory_budget),
        name="upload-parse",
        daemon=True,
    )
    gc.freeze()  # nothing inherited is collected (or finalised) in the child
    try:
        process.start()
    finally:
        gc.unfreeze()
    sender.close()
    try:
        return _await_child(process, receiver, beat, beat_every, silence_seconds)
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join(10)
        process.close()


def _await_child(
    process: multiprocessing.process.BaseProcess,
    receiver: Connection,
    beat: Callable[[], None],
    beat_every: float,
    silence_seconds: float,
) -> ParseResult:
    last_news = last_beat = time.monotonic()
    while True:
        ready = receiver.poll(min(beat_every, 1.0))
        now = time.monotonic()
        if now - last_beat >= beat_every:
            beat()
            last_beat = now
        if not ready:
            if now - last_news > silence_seconds:
                process.kill()
                raise ParserFailed(f"the parser gave no sign of progress for {silence_seconds:g} s")
            continue
        try:
            message = receiver.recv()
        except EOFError:
            process.join(10)
            code = process.exitcode
            if code is not None and code < 0:
                name = signal.Signals(-code).name
                raise ParserFailed(f"the parser was ended by signal {name}") from None
            raise ParserFailed(f"the parser exited ({code}) without an answer") from None
        last_news = now
        kind = message[0]
        if kind == "progress":
            continue
        if kind == "done":
            result: ParseResult = message[1]
            return result
        if kind == "oserror":
            raise ParserIOError(message[1], message[2])
        if kind == "failed":
            raise ParserFailed(message[1])
        log.error("upload parser failed", extra={"error": message[1]})
        raise RuntimeError(f"the upload parser failed with {message[1]}")
