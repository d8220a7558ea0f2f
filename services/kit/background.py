"""The one loop every background thread of a server process runs.

A `PeriodicThread` calls its task every `interval` seconds on a daemon thread until stopped. A
task that raises is logged and tried again next round: the work it does (sealing the audit
chain, signing a checkpoint, refreshing shared tables, reading the cache epochs) is always safe
to repeat, and a failed round must not end the thread. Which threads a process runs, and when
they start and stop, is decided in one place: `services.platform.Platform.start_background`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicThread:
    def __init__(
        self,
        name: str,
        task: Callable[[], object],
        interval: float,
        *,
        run_at_start: bool = False,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.interval = interval
        self._task = task
        self._run_at_start = run_at_start
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _loop(self) -> None:
        if self._run_at_start:
            self._round()
        while not self._stop.wait(self.interval):
            self._round()

    def _round(self) -> None:
        try:
            self._task()
        except Exception as exc:
            log.exception(
                "background task %s failed; it runs again in %.2f s", self.name, self.interval
            )
            if self._on_error is not None:
                self._on_error(exc)
