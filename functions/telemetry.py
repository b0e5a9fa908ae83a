"""OpenTelemetry traces and metrics of both functions, configured by the standard ``OTEL_*``
variables only (docs/observability.md).

Off unless an export is asked for: with neither ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or a
per-signal endpoint) nor ``OTEL_TRACES_EXPORTER``/``OTEL_METRICS_EXPORTER`` set (or with
``OTEL_SDK_DISABLED=true``), ``ingest()`` and ``sink()`` return None and the callers take their
untraced paths: no SDK objects, no spans, not even no-op ones. (The SDK's own default, OTLP to
localhost, would send to whatever listens there.)

Each function is a service of its own (``watch-progress-ingest``, ``watch-progress-sink``,
unless ``OTEL_SERVICE_NAME`` says otherwise), also when ``functions.local`` hosts both in one
process: each gets its own tracer and meter provider, with the same exporters.

Spans follow the semantic conventions: a SERVER span per request named by route template, a
PRODUCER span per record (its context in the record's headers), and in the sink one CONSUMER
span per batch that links the records' producer contexts (``links`` says which) with CLIENT
spans for the inserts, the dead-letter produce and the commit.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar

import orjson
from fastotel import OTLPSpanProcessor
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.instrumentation.propagators import TraceResponsePropagator
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "IngestTelemetry",
    "KafkaHeaders",
    "Process",
    "ReceivedHeaders",
    "SinkTelemetry",
    "check_configuration",
    "cloud_event_parent",
    "current_service_name",
    "current_trace_ids",
    "exporting_requested",
    "ingest",
    "reset",
    "resident_set_bytes",
    "service_name",
    "sink",
    "use_providers",
]

Function = Literal["ingest", "sink"]
# What a process serves: one function, or both (``functions.local``).
Process = Function | Literal["local"]
DEFAULT_SERVICE_NAMES: dict[Process, str] = {
    "ingest": "watch-progress-ingest",
    "sink": "watch-progress-sink",
    "local": "watch-progress-local",
}
_SCOPE = "watch-progress"
# Any of these asks for an export; without one, telemetry is off (see the module docstring).
_EXPORT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# HTTP statuses of a refused event -> the bounded ``reason`` attribute of ingest.events.rejected.
_REJECTION_REASONS = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}
_TRACEPARENT = "traceparent"
_W3C = TraceContextTextMapPropagator()
_RESPONSE_PROPAGATOR = TraceResponsePropagator()

Result = TypeVar("Result")
# Kafka record headers as confluent-kafka takes and gives them.
KafkaHeaders = list[tuple[str, str | bytes | None]]
ReceivedHeaders = KafkaHeaders | dict[str, str | bytes | None]


class _Request(Protocol):
    """What a SERVER span reads of a request (Starlette's, without importing Starlette: the
    sink's core may not)."""

    @property
    def method(self) -> str: ...

    @property
    def scope(self) -> MutableMapping[str, Any]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


class _Response(Protocol):
    status_code: int
    body: Any  # Starlette's bytes or memoryview

    @property
    def headers(self) -> Any: ...  # Starlette's MutableHeaders: get() and item assignment


RequestT = TypeVar("RequestT", bound=_Request)
ResponseT = TypeVar("ResponseT", bound=_Response)


def resident_set_bytes() -> int | None:
    """This process's current RSS (Linux ``/proc``)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except OSError:
        return None


def exporting_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the ``OTEL_*`` variables ask for any export (the switch of this module)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [environ.get(f"OTEL_{signal}_EXPORTER", "") for signal in ("TRACES", "METRICS")]
    if all(value.strip().lower() == "none" for value in exporters):
        return False
    return any(environ.get(name, "").strip() for name in _EXPORT_VARIABLES)


def check_configuration(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse at start-up what the exporters could not do (``ValueError`` naming the variable)."""
    if exporting_requested(environ):
        _check_protocol(environ)
        _exporter_names("OTEL_TRACES_EXPORTER", environ)
        _exporter_names("OTEL_METRICS_EXPORTER", environ)


def _exporter_names(variable: str, environ: Mapping[str, str]) -> list[str]:
    names = [n.strip().lower() for n in environ.get(variable, "otlp").split(",") if n.strip()]
    unknown = set(names) - {"otlp", "console", "none"}
    if unknown:
        raise ValueError(f"{variable}: {sorted(unknown)} not supported; use otlp, console or none")
    return [n for n in names if n != "none"]


def _check_protocol(environ: Mapping[str, str]) -> None:
    for variable in (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ):
        protocol = environ.get(variable, "http/protobuf").strip()
        if protocol != "http/protobuf":
            raise ValueError(f"{variable}={protocol!r}: only http/protobuf is installed")


def _providers(
    function: Function, environ: Mapping[str, str]
) -> tuple[TracerProvider, MeterProvider]:
    """The SDK providers the variables describe; the SDK itself reads the rest of them
    (sampler, span limits, batch processor, export interval, endpoint, headers, certificate)."""
    _check_protocol(environ)
    resource = _resource(function)
    tracer_provider = TracerProvider(resource=resource)
    for name in _exporter_names("OTEL_TRACES_EXPORTER", environ):
        # OTLP spans leave through fastotel's processor: BatchSpanProcessor's batching and
        # OTLPSpanExporter's encoding and transport, with their variables, in native code on a
        # thread that never takes the GIL. The pure-Python pair cost a traced request ~100 us of
        # CPU in its export thread, taken from the event loop; fastotel ~20 (docs/benchmarks.md).
        tracer_provider.add_span_processor(
            OTLPSpanProcessor() if name == "otlp" else BatchSpanProcessor(ConsoleSpanExporter())
        )
    readers: list[MetricReader] = [
        PeriodicExportingMetricReader(
            OTLPMetricExporter() if name == "otlp" else ConsoleMetricExporter()
        )
        for name in _exporter_names("OTEL_METRICS_EXPORTER", environ)
    ]
    # Exemplars (a sampled span's ids on a measurement) were about a third of the telemetry's
    # CPU a request here: off unless OTEL_METRICS_EXEMPLAR_FILTER asks for them.
    exemplars = None if environ.get("OTEL_METRICS_EXEMPLAR_FILTER") else AlwaysOffExemplarFilter()
    meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, exemplar_filter=exemplars
    )
    return tracer_provider, meter_provider


def _resource(process: Process) -> Resource:
    # The variables' service name and attributes win over the process's default.
    return Resource.create({SERVICE_NAME: DEFAULT_SERVICE_NAMES[process]}).merge(
        OTELResourceDetector().detect()
    )


def service_name(process: Process) -> str:
    """The ``service.name`` of ``process``'s telemetry (``OTEL_SERVICE_NAME``, else
    ``OTEL_RESOURCE_ATTRIBUTES``, else its default), for its logs and error reports to match."""
    return str(_resource(process).attributes[SERVICE_NAME])


_active: dict[Function, IngestTelemetry | SinkTelemetry | None] = {}


def use_providers(
    function: Function, tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> None:
    """Make ``function`` report to these providers from now on (tests; ``_build`` otherwise)."""
    tracer = tracer_provider.get_tracer(_SCOPE)
    meter = meter_provider.get_meter(_SCOPE)
    built: IngestTelemetry | SinkTelemetry
    if function == "ingest":
        built = IngestTelemetry(tracer, meter)
    else:
        # The limit the SDK applies (OTEL_SPAN_LINK_COUNT_LIMIT, else 128).
        built = SinkTelemetry(tracer, meter, SpanLimits().max_links or 128)
    _observe_process(meter)
    _active[function] = built


def reset() -> None:
    """Forget every function's providers (tests): the next call decides afresh."""
    _active.clear()


def _build(function: Function) -> IngestTelemetry | SinkTelemetry | None:
    if function not in _active:
        if exporting_requested():
            use_providers(function, *_providers(function, os.environ))
        else:
            _active[function] = None
    return _active[function]


def ingest() -> IngestTelemetry | None:
    """The ingest function's telemetry; None when nothing is exported."""
    built = _build("ingest")
    assert built is None or isinstance(built, IngestTelemetry)
    return built


def sink() -> SinkTelemetry | None:
    """The sink's telemetry; None when nothing is exported."""
    built = _build("sink")
    assert built is None or isinstance(built, SinkTelemetry)
    return built


def _observe_process(meter: Meter) -> None:
    def rss(_options: CallbackOptions) -> Iterable[Observation]:
        value = resident_set_bytes()
        return [] if value is None else [Observation(value)]

    # An UpDownCounter per the semantic conventions; observed, since /proc knows the value.
    meter.create_observable_up_down_counter(
        "process.memory.usage", [rss], unit="By", description="The process's resident set size"
    )


def current_trace_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in W3C hex, for logs and error reports; None with
    no valid span (telemetry off, or outside any request or batch)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def current_service_name() -> str | None:
    """The ``service.name`` of the current span's function; None outside a recorded span.
    Where one process hosts both functions, this tells a request's lines from a batch's."""
    resource: Resource | None = getattr(trace.get_current_span(), "resource", None)
    return None if resource is None else str(resource.attributes.get(SERVICE_NAME, "")) or None


def _failed(span: Span, attributes: dict[str, Any], exc: BaseException) -> None:
    attributes["error.type"] = type(exc).__qualname__
    span.set_attribute("error.type", attributes["error.type"])
    span.set_status(Status(StatusCode.ERROR, str(exc)))


# The semantic conventions' advice for duration histograms, in seconds.
_DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]


def _duration(meter: Meter, name: str, description: str) -> Histogram:
    return meter.create_histogram(
        name,
        unit="s",
        description=description,
        explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
    )


@contextmanager
def _measured(
    span_in_use: AbstractContextManager[Span | None],
    duration: Histogram,
    attributes: dict[str, Any],
) -> Iterator[Span | None]:
    """A span in use, its failure recorded (``error.type``, status ERROR), and its duration
    recorded in ``duration`` with ``attributes`` (``error.type`` included on failure)."""
    started = time.perf_counter()
    with span_in_use as span:
        try:
            yield span
        except BaseException as exc:
            if span is not None:
                _failed(span, attributes, exc)
            raise
        finally:
            duration.record(time.perf_counter() - started, attributes)


# The conventions' messaging client instruments: (name, description) of the duration, (name,
# unit, description) of the sent count (a counter in the sink, observed over a tally in ingest).
_OPERATION_DURATION = (
    "messaging.client.operation.duration",
    "Duration of messaging operation initiated by a producer or consumer",
)
_SENT_MESSAGES = (
    "messaging.client.sent.messages",
    "{message}",
    "Number of messages producer attempted to send to the broker",
)


@dataclass(frozen=True, slots=True)
class _MessagingClient:
    """The conventions' messaging client instruments, on a function's meter."""

    operation_duration: Histogram
    sent: Counter

    @classmethod
    def on(cls, meter: Meter) -> _MessagingClient:
        name, unit, description = _SENT_MESSAGES
        return cls(
            _duration(meter, *_OPERATION_DURATION),
            meter.create_counter(name, unit=unit, description=description),
        )


def _kafka_operation(topic: str, operation: str) -> dict[str, Any]:
    """The attributes a Kafka client operation's span and metrics share."""
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.name": operation,
    }


def _context_headers(context: otel_context.Context | None = None) -> KafkaHeaders:
    """Kafka record headers that carry ``context`` (else the current one): W3C
    ``traceparent``, ..."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context)
    return [(name, value.encode()) for name, value in carrier.items()]


def _record_context(headers: ReceivedHeaders | None) -> SpanContext | None:
    """The valid producer context in a record's headers, else None (missing or garbage alike:
    a record is never judged by its telemetry)."""
    if not headers:
        return None
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        if name == _TRACEPARENT and value:
            try:
                carrier = {_TRACEPARENT: value if isinstance(value, str) else value.decode()}
            except UnicodeDecodeError:
                return None
            context = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
            return context if context.is_valid else None
    return None


class _Tally:
    """Totals per attribute set that an observable instrument reports at each collection.

    What a request counts is added here, to a plain integer, and not to a synchronous
    instrument: the SDK validates and hashes the attribute set on each ``add`` (3-4 us), and a
    traced request counted four times. Only the event loop's thread adds; the reader's thread
    reports a copy (one C-level ``dict`` copy, atomic under the GIL)."""

    def __init__(self, *names: str, constant: Mapping[str, str] | None = None) -> None:
        self._names = names
        self._constant = dict(constant or {})  # attributes every total carries
        self._totals: dict[tuple[Any, ...], int] = {}

    def add(self, amount: int, *values: Any) -> None:
        """Add to the total of the attribute set ``values`` (in the order of ``names``; a None
        value leaves its attribute out)."""
        self._totals[values] = self._totals.get(values, 0) + amount

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                total,
                {
                    **self._constant,
                    **{
                        name: value
                        for name, value in zip(self._names, values, strict=True)
                        if value is not None
                    },
                },
            )
            for values, total in dict(self._totals).items()
        ]


class IngestTelemetry:
    """The ingest function's SERVER and PRODUCER spans and its metrics.

    A traced request is the hot path of the traced function: spans are started and ended
    directly (not through ``start_as_current_span``'s context managers), the two durations are
    the only synchronous measurements, and the counts are ``_Tally``s."""

    def __init__(self, tracer: trace.Tracer, meter: Meter) -> None:
        self._tracer = tracer
        self._duration = _duration(
            meter, "http.server.request.duration", "Duration of HTTP server requests"
        )
        self._send_duration = _duration(meter, *_OPERATION_DURATION)
        self._active = _Tally("http.request.method", "url.scheme")
        self._sent = _Tally(
            "messaging.destination.name",
            "error.type",
            constant={"messaging.system": "kafka", "messaging.operation.name": "send"},
        )
        self._accepted = _Tally()
        self._rejected = _Tally("reason")
        meter.create_observable_up_down_counter(
            "http.server.active_requests",
            [self._active.observe],
            unit="{request}",
            description="Number of active HTTP server requests",
        )
        for tally, name, unit, description in (
            (self._sent, *_SENT_MESSAGES),
            (self._accepted, "ingest.events.accepted", "{event}", "Events acknowledged by Kafka"),
            (self._rejected, "ingest.events.rejected", "{event}", "Events refused, by reason"),
        ):
            meter.create_observable_counter(
                name, [tally.observe], unit=unit, description=description
            )

    async def serve(
        self,
        request: RequestT,
        route_template: str | None,
        answer: Callable[[RequestT], Awaitable[ResponseT]],
        carries_events: bool,
    ) -> ResponseT:
        """``answer(request)`` inside a SERVER span that continues the caller's trace; the
        answer carries ``traceresponse``."""
        method = request.method
        scheme = request.scope.get("scheme", "http")
        # The conventions' required and conditionally required attributes only: each one costs
        # about a microsecond a request (validated by the SDK), the recommended ones (client and
        # server address, user agent, protocol version) would add a tenth to the span's cost.
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scheme,
            "url.path": request.scope["path"],
        }
        if route_template is not None:
            attributes["http.route"] = route_template
        span = self._tracer.start_span(
            f"{method} {route_template}" if route_template else method,
            context=propagate.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        # Current for the rest of this request's task, never detached: the framework sends the
        # answer after this returns and the server writes its access line then, which takes its
        # trace.id from the (ended) span. Each request is a task of its own, so the context goes
        # with it.
        otel_context.attach(trace.set_span_in_context(span))
        del attributes["url.path"]  # a metric attribute of unbounded cardinality
        self._active.add(1, method, scheme)
        started = time.perf_counter()
        try:
            response = await answer(request)
        except BaseException as exc:
            _failed(span, attributes, exc)
            span.record_exception(exc)
            raise
        else:
            status = response.status_code
            attributes["http.response.status_code"] = status
            span.set_attribute("http.response.status_code", status)
            if status >= 500:  # a 4xx is the client's error, not the server span's
                attributes["error.type"] = str(status)
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
            _RESPONSE_PROPAGATOR.inject(response.headers)
        finally:
            span.end()
            self._active.add(-1, method, scheme)
            self._duration.record(time.perf_counter() - started, attributes)
        if carries_events:
            self._count_rejected(response)
        return response

    def _count_rejected(self, response: _Response) -> None:
        status = response.status_code
        if status >= 400:
            self._rejected.add(1, _REJECTION_REASONS.get(status, "other"))
        elif status == 207:  # a batch: each item has its own status
            items = orjson.loads(bytes(response.body)).get("items", [])
            refused = collections.Counter(
                item["problem"].get("status") for item in items if item.get("status") == "rejected"
            )
            for item_status, count in refused.items():
                self._rejected.add(count, _REJECTION_REASONS.get(item_status, "other"))

    def sending(self, topic: str, message_id: str | None) -> _Send:
        """The PRODUCER span ``send <topic>`` of one record, a child of the current span: use
        it as a context manager around the record's send and ack."""
        return _Send(self._tracer, topic, message_id, self._sent_one)

    def _sent_one(self, attributes: dict[str, Any], seconds: float, accepted: bool) -> None:
        self._send_duration.record(seconds, attributes)
        self._sent.add(1, attributes["messaging.destination.name"], attributes.get("error.type"))
        if accepted:
            self._accepted.add(1)


class _Send:
    """One record's PRODUCER span: ``headers`` carry its context into the record,
    ``acknowledged`` adds the partition and offset; on exit the span ends and the send is
    measured and counted (accepted only when no exception left the block)."""

    __slots__ = ("_attributes", "_done", "_span", "_started", "headers")

    def __init__(
        self,
        tracer: trace.Tracer,
        topic: str,
        message_id: str | None,
        done: Callable[[dict[str, Any], float, bool], None],
    ) -> None:
        self._done = done  # with the metric attributes, the duration, and whether it was acked
        self._attributes = _kafka_operation(topic, "send")
        span_attributes = {**self._attributes, "messaging.operation.type": "send"}
        if message_id is not None:
            span_attributes["messaging.message.id"] = message_id
        self._span = tracer.start_span(
            f"send {topic}", kind=SpanKind.PRODUCER, attributes=span_attributes
        )
        self.headers = _context_headers(trace.set_span_in_context(self._span))
        self._started = time.perf_counter()

    def __enter__(self) -> _Send:
        return self

    def acknowledged(self, partition: int | None, offset: int | None) -> None:
        if partition is not None:
            self._span.set_attribute("messaging.destination.partition.id", str(partition))
        if offset is not None:
            self._span.set_attribute("messaging.kafka.offset", offset)

    def __exit__(
        self,
        _type: type[BaseException] | None,
        exc: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            _failed(self._span, self._attributes, exc)
            self._span.record_exception(exc)
        self._span.end()
        self._done(self._attributes, time.perf_counter() - self._started, exc is None)


@dataclass(slots=True)
class _BatchTrace:
    span: Span
    context: otel_context.Context
    started: float
    records: int


class SinkTelemetry:
    """The sink's CONSUMER span per batch and its children, and the sink's metrics."""

    def __init__(self, tracer: trace.Tracer, meter: Meter, max_links: int) -> None:
        self._tracer = tracer
        self._meter = meter
        self.max_links = max_links
        self._batches: dict[int, _BatchTrace] = {}  # id(batch) -> its span, until it ends
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Number of messages that were delivered to the application",
        )
        self._process_duration = _duration(
            meter, "messaging.process.duration", "Duration of processing operation"
        )
        self._messaging = _MessagingClient.on(meter)
        self._batch_size = meter.create_histogram(
            "sink.batch.size",
            unit="{record}",
            description="Records a batch",
            explicit_bucket_boundaries_advisory=[1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000],
        )
        self._db_duration = _duration(
            meter, "db.client.operation.duration", "Duration of database client operations"
        )
        self._rows = meter.create_counter(
            "sink.rows.inserted", unit="{row}", description="Rows ClickHouse accepted"
        )
        self._dead_letters = meter.create_counter(
            "sink.dead_letters",
            unit="{record}",
            description="Poison records sent to the dead-letter topic, by reason",
        )
        self._retries = meter.create_counter(
            "sink.retries",
            unit="{batch}",
            description="Batches rewound to be read again after a failed write, by cause",
        )

    # --- the batch span -------------------------------------------------------------------

    def header_stride(self, max_records: int) -> int:
        """Read the headers of every this-many records of a batch of up to ``max_records``:
        at most ``max_links`` records' headers a batch are read at all."""
        return max(1, -(-max_records // self.max_links))  # ceil

    def links(self, headers: Sequence[ReceivedHeaders | None]) -> list[Link]:
        """Links to the sampled producer contexts among ``headers`` (records' headers), at most
        ``max_links`` of them examined, at an even stride."""
        stride = self.header_stride(len(headers))
        links = []
        for record_headers in headers[::stride]:
            context = _record_context(record_headers)
            if context is not None and context.trace_flags.sampled:
                links.append(Link(context))
        return links

    def begin_batch(
        self,
        batch_key: object,
        topic: str,
        records: int,
        headers: Sequence[ReceivedHeaders | None],
        parent: otel_context.Context | None = None,
        consumer_group: str | None = None,
    ) -> None:
        """Start the CONSUMER span ``process <topic>`` of a batch of ``records``, linked to the
        producer contexts in ``headers`` (of some of its records); ended by ``end_batch``."""
        links = self.links(headers)
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.batch.message_count": records,
            "sink.links.omitted": records - len(links),
        }
        if consumer_group is not None:
            attributes["messaging.consumer.group.name"] = consumer_group
        span = self._tracer.start_span(
            f"process {topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        self._batches[id(batch_key)] = _BatchTrace(
            span, trace.set_span_in_context(span), time.perf_counter(), records
        )
        self._consumed.add(records, {"messaging.system": "kafka"})
        self._batch_size.record(records)

    def within_batch(self, batch_key: object, work: Callable[[], Result]) -> Callable[[], Result]:
        """``work`` to run on any thread as a child of the batch's span."""
        if id(batch_key) not in self._batches:
            return work

        def run() -> Result:
            with self.in_batch(batch_key):
                return work()

        return run

    @contextmanager
    def in_batch(self, batch_key: object) -> Iterator[None]:
        """The batch's span current within (on this thread), if the batch has one."""
        traced = self._batches.get(id(batch_key))
        if traced is None:
            yield
            return
        token = otel_context.attach(traced.context)
        try:
            yield
        finally:
            otel_context.detach(token)

    def child(
        self, batch_key: object, name: str, kind: SpanKind, attributes: dict[str, Any]
    ) -> AbstractContextManager[Span | None]:
        """A child span of the batch's span (or nothing, if the batch has none)."""
        traced = self._batches.get(id(batch_key))
        if traced is None:
            return nullcontext()
        return self._tracer.start_as_current_span(
            name, context=traced.context, kind=kind, attributes=attributes
        )

    def end_batch(self, batch_key: object, error: BaseException | None = None) -> None:
        traced = self._batches.pop(id(batch_key), None)
        if traced is None:
            return
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.name": "process",
        }
        if error is not None:
            _failed(traced.span, attributes, error)
        traced.span.end()
        self._process_duration.record(time.perf_counter() - traced.started, attributes)

    # --- children and counts --------------------------------------------------------------

    def validation_span(self, records: int) -> AbstractContextManager[Span]:
        """The INTERNAL span of parsing and validating records in Python (the slow path)."""
        return self._tracer.start_as_current_span(
            "validate views", attributes={"sink.records": records}
        )

    @contextmanager
    def insert_span(self, table: str, rows: int, dedup_token: str) -> Iterator[None]:
        """The CLIENT span of one ClickHouse insert and its ``db.client.operation.duration``."""
        attributes: dict[str, Any] = {
            "db.system.name": "clickhouse",
            "db.operation.name": "INSERT",
            "db.collection.name": table,
        }
        span_in_use = self._tracer.start_as_current_span(
            f"INSERT {table}",
            kind=SpanKind.CLIENT,
            attributes={
                **attributes,
                "db.operation.batch.size": rows,
                "sink.dedup_token": dedup_token,
            },
        )
        with _measured(span_in_use, self._db_duration, attributes):
            yield
        self._rows.add(rows, {"db.collection.name": table})

    @contextmanager
    def dead_letter_span(
        self, batch_key: object, topic: str, reasons: Iterable[str]
    ) -> Iterator[KafkaHeaders]:
        """The PRODUCER span of a batch's dead-letter records; yields the headers that carry
        its context (one for all the records: the cost is per batch)."""
        counted = collections.Counter(reasons)
        records = sum(counted.values())
        attributes = _kafka_operation(topic, "send")
        span_in_use = self.child(
            batch_key,
            f"send {topic}",
            SpanKind.PRODUCER,
            {
                **attributes,
                "messaging.operation.type": "send",
                "messaging.batch.message_count": records,
            },
        )
        try:
            with _measured(span_in_use, self._messaging.operation_duration, attributes):
                yield _context_headers()
        finally:
            self._messaging.sent.add(records, attributes)
        for reason, count in counted.items():
            self._dead_letters.add(count, {"reason": reason})

    @contextmanager
    def commit_span(self, batch_key: object, topic: str) -> Iterator[None]:
        """The CLIENT span of a batch's offset commit."""
        attributes = _kafka_operation(topic, "commit")
        span_in_use = self.child(
            batch_key,
            f"commit {topic}",
            SpanKind.CLIENT,
            {**attributes, "messaging.operation.type": "settle"},
        )
        with _measured(span_in_use, self._messaging.operation_duration, attributes):
            yield

    def retried(self, cause: str) -> None:
        self._retries.add(1, {"cause": cause})

    def observe_consumer(
        self,
        lag: Callable[[], Mapping[tuple[str, int], int]],
        backoff_seconds: Callable[[], float],
    ) -> None:
        """The gauges of a consumer loop: lag per partition and the current back-off."""

        def observe_lag(_options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(
                    value,
                    {
                        "messaging.destination.name": topic,
                        "messaging.destination.partition.id": str(partition),
                    },
                )
                for (topic, partition), value in lag().items()
            ]

        def observe_backoff(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(backoff_seconds())]

        self._meter.create_observable_gauge(
            "sink.consumer.lag",
            [observe_lag],
            unit="{message}",
            description="Records of a partition after this group's last commit",
        )
        self._meter.create_observable_gauge(
            "sink.backoff",
            [observe_backoff],
            unit="s",
            description="The back-off before the next write; 0 while writes succeed",
        )


def cloud_event_parent(
    http_headers: Mapping[str, str],
    attributes: Mapping[str, Any],
    record_headers: KafkaHeaders | None,
) -> otel_context.Context:
    """The parent of a KafkaSource CloudEvent's span: the request's ``traceparent`` (the
    dispatcher's span), else a ``traceparent`` extension, else the record's producer context;
    an empty context (a new trace) when none is valid."""
    candidates = [
        http_headers.get(_TRACEPARENT),
        attributes.get(_TRACEPARENT),
    ]
    for candidate in candidates:
        if candidate:
            carrier = {_TRACEPARENT: str(candidate)}
            state = http_headers.get("tracestate") or attributes.get("tracestate")
            if state:
                carrier["tracestate"] = str(state)
            context = _W3C.extract(carrier)
            if trace.get_current_span(context).get_span_context().is_valid:
                return context
    producer = _record_context(record_headers)
    if producer is None:
        return otel_context.Context()
    return trace.set_span_in_context(trace.NonRecordingSpan(producer))
