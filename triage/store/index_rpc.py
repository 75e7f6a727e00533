"""The study index across processes: listener processes send their index
calls to the one writer in the main process over a pipe.

Python runs one thread at a time per process, and a C-STORE costs a few ms of
CPU (PDU handling, header parsing, hashing), so ``triage serve`` runs several
listener processes on one shared listening socket. SQLite wants one writer,
and group commits want every record in one queue: so the index stays in the
main process and the listener processes reach it through :class:`IndexClient`,
which has the same shape as :class:`triage.store.index.SqlIndex`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from dicom_io.ingest import IndexRecord
from triage.errors import USER_ERRORS, DatabaseError, IndexUnreachableError, TriageError
from triage.store.index import SqlIndex

log = logging.getLogger(__name__)


class IndexClient:
    """The :class:`dicom_io.ingest.Index` of a listener process.

    ``on_lost`` is called once if the main process goes away, so the listener
    process can stop instead of refusing every store.
    """

    def __init__(self, conn: Connection, on_lost: Callable[[], None] | None = None) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future[Any]] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count()
        self._lost = False
        self._on_lost = on_lost
        self._reader = threading.Thread(target=self._read, name="index-client", daemon=True)
        self._reader.start()

    def find(self, sop_instance_uid: str) -> tuple[str, str] | None:
        return self._call("find", sop_instance_uid)

    def record(self, record: IndexRecord) -> bool:
        return self._call("record", record)

    def record_conflict(self, record: IndexRecord, kept_relpath: str) -> None:
        # Answered once the main process has committed it (or with its error), like ``record``.
        self._call("record_conflict", record, kept_relpath)

    def _call(self, method: str, *args: Any) -> Any:
        future: Future[Any] = Future()
        call_id = next(self._ids)
        with self._pending_lock:
            if self._lost:
                raise IndexUnreachableError("the index process is gone")
            self._pending[call_id] = future
        try:
            with self._send_lock:
                self._conn.send((call_id, method, args))
        except (OSError, ValueError) as exc:
            with self._pending_lock:
                self._pending.pop(call_id, None)
            raise IndexUnreachableError(f"cannot reach the index process: {exc}") from None
        return future.result()

    def _read(self) -> None:
        while True:
            try:
                call_id, ok, value = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._pending_lock:
                future = self._pending.pop(call_id, None)
            if future is None:
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(DatabaseError(value))
        with self._pending_lock:
            self._lost = True
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(IndexUnreachableError("the index process is gone"))
        if self._on_lost is not None:
            self._on_lost()


def serve_index(conn: Connection, index: SqlIndex) -> threading.Thread:
    """Answer one listener process's index calls (main process side), in a thread.

    ``record`` calls join the index's group commit and are answered when it
    commits; the reader does not wait for it, so calls from many associations
    share one commit.
    """
    send_lock = threading.Lock()

    def reply(call_id: int, ok: bool, value: Any) -> None:
        try:
            with send_lock:
                conn.send((call_id, ok, value))
        except (OSError, ValueError):
            pass  # the listener process is gone; its peer gets no answer and resends

    def on_commit(call_id: int, future: Future[bool]) -> None:
        exc = future.exception()
        reply(call_id, exc is None, str(exc) if exc is not None else future.result())

    def loop() -> None:
        while True:
            try:
                call_id, method, args = conn.recv()
            except (EOFError, OSError):
                return
            if method == "record":
                index.submit(args[0]).add_done_callback(functools.partial(on_commit, call_id))
                continue
            try:
                if method not in ("find", "record_conflict"):
                    raise TriageError(f"unknown index call {method!r}")
                reply(call_id, True, getattr(index, method)(*args))
            except USER_ERRORS as exc:
                reply(call_id, False, str(exc))

    thread = threading.Thread(target=loop, name="index-server", daemon=True)
    thread.start()
    return thread
