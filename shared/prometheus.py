"""Prometheus ``/metrics`` for one service: the figures its RpcStats already holds.

    endpoint = await start_endpoint(stats, component="ingest", host="0.0.0.0", port=9464)
    ...                                  # GET http://host:9464/metrics, text or OpenMetrics
    await endpoint.close()

Nothing is instrumented twice: ``RpcStatsCollector`` is a prometheus-client custom
collector that reads, at scrape time, the same ``RpcStats`` the OTLP exporter pushes
(``shared/rpcstats.py``), so the request path keeps its one ~1 µs ``record()``. It yields

- ``grpc_server_handled_total{grpc_service, grpc_method, grpc_code}``: calls per method and
  status code, and ``grpc_server_handling_seconds``, their latency histogram (the names and
  labels of go-grpc-prometheus, so existing gRPC dashboards and alerts apply);
- every gauge registered with ``RpcStats.add_gauges``: ``clawmesh.edge.admission.load_percentage``
  becomes ``clawmesh_edge_admission_load_percentage``; a key that carries labels
  (``state{peer=routing:50052,method=/p.S/M}``, the breakers') keeps them as labels;
- ``clawmesh_gauge_source_errors_total`` and the process figures (RSS, CPU, open files).

Every series has ``component="<service>"``, so dashboards group by service whatever the
scrape configuration adds.

The endpoint is a small asyncio HTTP server on the service's own event loop, not
prometheus-client's threaded one: RpcStats is read without locks and some gauge sources
are ``async def`` (Redis), so a scrape must run on the loop. A scrape costs one
``collect_gauges`` (bounded by ``GAUGE_TIMEOUT_S``) and the text encoding, never a request's time.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator

import grpc
from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from clawmesh.shared.rpcstats import RpcStats

log = logging.getLogger(__name__)

PATH = "/metrics"
GAUGE_TIMEOUT_S = 1.0  # async gauge sources (a Redis SCAN) get this long per scrape
REQUEST_TIMEOUT_S = 5.0  # a client that sends no complete request head within this is dropped
MAX_HEAD_BYTES = 8192

_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_LABELLED = re.compile(r"^(?P<name>[^{]+)\{(?P<labels>.*)\}$")
# Label values may contain commas (a target such as ipv4:10.0.0.1:1,10.0.0.2:1): a pair
# ends only where the next "key=" begins.
_PAIR = re.compile(r"(\w+)=(.*?)(?=,\w+=|$)")


def metric_name(name: str) -> str:
    """``clawmesh.edge.admission.load_percentage`` -> ``clawmesh_edge_admission_load_percentage``."""
    out = _INVALID.sub("_", name)
    return out if not out[:1].isdigit() else f"_{out}"


def split_gauge_key(key: str) -> tuple[str, dict[str, str]]:
    """A gauge's full name and the labels embedded in it: ``a.b{peer=x,method=/m}``."""
    m = _LABELLED.match(key)
    if m is None:
        return metric_name(key), {}
    labels = {k: v for k, v in _PAIR.findall(m["labels"])}
    return metric_name(m["name"]), labels


def split_method(path: str) -> tuple[str, str]:
    """``/clawmesh.ingest.v1.IngestService/Submit`` -> (service, method); others kept whole."""
    service, sep, method = path.lstrip("/").rpartition("/")
    return (service, method) if sep else ("", path)


class RpcStatsCollector:
    """A prometheus-client collector over an ``RpcStats``: the RED figures and the gauges.

    The gauges are read asynchronously (``await refresh()``) just before each encoding,
    since some of their sources are coroutines; ``collect()`` itself never waits.
    """

    def __init__(self, stats: RpcStats, component: str) -> None:
        self.stats = stats
        self.component = component
        self.gauges: dict[str, float | int] = {}
        self.seconds = [b / 1000.0 for b in stats.bounds]

    async def refresh(self, timeout_s: float = GAUGE_TIMEOUT_S) -> None:
        self.gauges = await self.stats.collect_gauges(timeout_s)

    def collect(self) -> Iterator[Metric]:
        keys = ["grpc_service", "grpc_method", "grpc_code", "component"]
        handled = CounterMetricFamily(
            "grpc_server_handled", "RPCs completed on the server, by method and status code",
            labels=keys)
        latency = HistogramMetricFamily(
            "grpc_server_handling_seconds", "server-side RPC latency, by method and status code",
            labels=keys)
        for s in self.stats.snapshot():
            labels = [*split_method(s.method), _code_name(s.code), self.component]
            handled.add_metric(labels, s.count)
            cumulative, buckets = 0, []
            for bound, count in zip([*self.seconds, float("inf")], s.bucket_counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric(labels, buckets, s.sum / 1000.0)
        yield handled
        yield latency
        yield from self._gauge_families()
        errors = CounterMetricFamily(
            "clawmesh_gauge_source_errors", "gauge sources that raised or timed out",
            labels=["component"])
        errors.add_metric([self.component], self.stats.gauge_errors)
        yield errors

    def _gauge_families(self) -> Iterator[Metric]:
        families: dict[str, tuple[GaugeMetricFamily, list[str]]] = {}
        for key, value in self.gauges.items():
            name, labels = split_gauge_key(key)
            labels = {metric_name(k): v for k, v in labels.items()} | {"component": self.component}
            if name not in families:
                help_text = f"RpcStats gauge {key.split('{')[0]}"
                families[name] = (GaugeMetricFamily(name, help_text, labels=list(labels)), list(labels))
            family, names = families[name]
            if list(labels) != names:  # one label set per name, as Prometheus needs
                log.debug("gauge %s: label names differ from its first series; skipped", key)
                continue
            family.add_metric(list(labels.values()), value)
        yield from (family for family, _ in families.values())


class _WithComponent:
    """Another collector's families, each sample with ``component`` added."""

    def __init__(self, inner, component: str) -> None:
        self.inner = inner
        self.component = component

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            family.samples = [s._replace(labels={**s.labels, "component": self.component})
                              for s in family.samples]
            yield family


_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


def _code_name(code: int) -> str:
    return _CODE_NAMES.get(code, str(code))


def build_registry(stats: RpcStats, component: str) -> tuple[CollectorRegistry, RpcStatsCollector]:
    """A registry of this process's figures: ``stats`` plus the process and platform figures."""
    registry = CollectorRegistry(auto_describe=False)
    collector = RpcStatsCollector(stats, component)
    registry.register(collector)
    registry.register(_WithComponent(ProcessCollector(registry=None), component))
    registry.register(_WithComponent(PlatformCollector(registry=None), component))
    return registry, collector


class MetricsEndpoint:
    """The running HTTP endpoint; ``port`` is the bound one (useful with port 0)."""

    def __init__(self, registry: CollectorRegistry, collector: RpcStatsCollector) -> None:
        self.registry = registry
        self.collector = collector
        self.server: asyncio.Server | None = None
        self.port = 0

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """One scrape's body and content type (OpenMetrics when the scraper asks for it)."""
        await self.collector.refresh()
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = (lines[0].split(" ") + ["", "", ""])[:3]
            headers = dict(line.partition(":")[::2] for line in lines[1:] if ":" in line)
            accept = next((v.strip() for k, v in headers.items() if k.strip().lower() == "accept"), "")
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif target.split("?")[0] != PATH:
                status, body, ctype = "404 Not Found", f"see {PATH}\n".encode(), "text/plain"
            else:
                body, ctype = await self.render(accept)
                status = "200 OK"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass  # a scraper that went away or never spoke HTTP: nothing to answer
        except Exception:  # noqa: BLE001 - a failed scrape must never reach the service
            log.exception("metrics scrape failed")
        finally:
            writer.close()

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD_BYTES)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


async def start_endpoint(stats: RpcStats, component: str, host: str, port: int) -> MetricsEndpoint:
    """Serve ``stats`` (and the process's figures) at ``http://host:port/metrics``."""
    endpoint = MetricsEndpoint(*build_registry(stats, component))
    await endpoint.start(host, port)
    log.info("prometheus metrics", extra={"address": f"{host}:{endpoint.port}", "path": PATH})
    return endpoint
