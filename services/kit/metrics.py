"""The platform's Prometheus figures, the one module that speaks prometheus-client.

Services count what they do (uploads, rows, audit events); the gateway counts requests and
exposes `render()` at `/metrics`. A server of several worker processes (`together serve
--workers N`) keeps its figures in files under `<data dir>/metrics` (prometheus-client's
multiprocess mode, switched on by `use_folder` before any worker starts), so one scrape of any
worker answers the sum over all of them. A single process without that folder counts in memory.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# prometheus-client reads this variable when a metric is created and at scrape time.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = CONTENT_TYPE_LATEST

HTTP_REQUESTS = Counter(
    "together_http_requests_total",
    "HTTP requests answered, by route template (never the raw path), method and status",
    ("route", "method", "status"),
)
HTTP_LATENCY = Histogram(
    "together_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template",
    ("route",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
UPLOADS = Counter(
    "together_uploads_total", "Dataset uploads, by outcome (accepted or refused)", ("outcome",)
)
UPLOAD_ROWS = Counter(
    "together_upload_rows_total",
    "Rows of uploaded files, by outcome (accepted or refused)",
    ("outcome",),
)
AUDIT_EVENTS = Counter("together_audit_events_written_total", "Audit events committed")

# Figures read at scrape time (sealer lag, cache-epoch age): name -> (help, reader). A reader
# that answers None or fails leaves its figure out of that scrape rather than failing it.
_readings: dict[str, tuple[str, Callable[[], float | None]]] = {}


def count_upload(outcome: str, rows: int) -> None:
    UPLOADS.labels(outcome).inc()
    if rows:
        UPLOAD_ROWS.labels(outcome).inc(rows)


def use_folder(folder: Path) -> None:
    """Count in files under `folder`, emptied first (figures of an earlier run would add up
    with this one's). Called by the server before its workers start; they inherit the variable."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROCESS_ENV] = str(folder)


def read_at_scrape(name: str, help_text: str, reader: Callable[[], float | None]) -> None:
    _readings[name] = (help_text, reader)


class _Readings(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (help_text, reader) in sorted(_readings.items()):
            try:
                value = reader()
            except Exception:
                # Left out of this scrape; the others still answer.
                log.warning("the figure %s could not be read", name, exc_info=True)
                continue
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)


def render() -> bytes:
    """Every figure in the Prometheus text format, summed over the worker processes."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        # Only counters and histograms are kept in files: a dead worker's counts stay in the
        # sum (they happened), and no live gauge of its needs forgetting.
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_Everything())
    registry.register(_Readings())
    return generate_latest(registry)


class _Everything(Collector):
    """This process's own counters (the default registry), next to the scrape-time readings."""

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        yield from REGISTRY.collect()
