"""OpenTelemetry tracing (docs/API.md §12), optional: ``pip install 'metamorph[otel]'``.

Off unless configured, and then free: every hook checks one module global (``_tracer``) and does nothing
else, and ``opentelemetry`` is imported only by :func:`configure`. Turn it on per process with
``actors.tracing.configure()`` (uses the global tracer provider your app set up, or the one you pass) or,
without code changes, ``METAMORPH_TRACING=1`` (read when a Client, node, worker or projector starts).

Spans: ``metamorph.start``/``metamorph.signal`` (client), ``metamorph.step`` (one decision batch of one
workflow on its node), ``metamorph.activity`` (one attempt, on the worker), ``metamorph.project`` (one
projector batch). The context crosses processes in Kafka record headers written by OpenTelemetry's
propagator (W3C ``traceparent``/``tracestate`` by default): start command → step → activity task →
attempt → outcome command → next step. A run records the context of its start in ``WorkflowStarted``
(``trace``), so later steps — timers, signals, steps after a node restart or on another node — join the
same trace: one trace shows a workflow end to end. Commands carry their context in memory as
``command["_trace"]`` (a carrier dict) between the consumer and the actor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from eventstore import settings

#: The configured tracer (None: tracing off, every hook returns at once).
_tracer: Any = None
#: Header names the propagator writes; records are scanned for these only.
_fields: frozenset[str] = frozenset({"traceparent", "tracestate"})
_env_checked = False

Carrier = dict[str, str]


def configure(tracer_provider: Any = None) -> None:
    """Emit spans from this process, through ``tracer_provider`` or OpenTelemetry's global provider.

    Raises ImportError naming the extra when OpenTelemetry is not installed.
    """
    global _tracer, _fields
    try:
        from opentelemetry import propagate, trace
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("tracing needs OpenTelemetry: pip install 'metamorph[otel]'") from exc
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    _tracer = provider.get_tracer("metamorph")
    _fields = frozenset(propagate.get_global_textmap().fields) or _fields


def disable() -> None:
    """Stop emitting spans in this process (tests; a reconfigured app)."""
    global _tracer
    _tracer = None


def configure_from_env() -> None:
    """``METAMORPH_TRACING=1`` turns tracing on with the global provider (checked once per process)."""
    global _env_checked
    if _env_checked:
        return
    _env_checked = True
    if _tracer is None and settings.get("METAMORPH_TRACING"):
        configure()


def enabled() -> bool:
    return _tracer is not None


def carrier_of(headers: Any) -> Carrier | None:
    """The trace context in Kafka record headers (``[(name, bytes)]``), or None."""
    if not headers:
        return None
    found = {name: value.decode("latin-1") for name, value in headers if name in _fields and value is not None}
    return found or None


def headers_of(carrier: Mapping[str, str] | None) -> list[tuple[str, bytes]] | None:
    """Kafka record headers carrying ``carrier`` (None when there is nothing to carry)."""
    if not carrier:
        return None
    return [(name, value.encode("latin-1")) for name, value in carrier.items()]


def current_carrier() -> Carrier | None:
    """The active span's context as propagator headers (None when tracing is off or no span is active)."""
    if _tracer is None:
        return None
    from opentelemetry import propagate

    carrier: Carrier = {}
    propagate.inject(carrier)
    return carrier or None


def outgoing_headers() -> list[tuple[str, bytes]] | None:
    """Headers for a record sent now, from inside a span (None when tracing is off)."""
    return headers_of(current_carrier()) if _tracer is not None else None


_KINDS = {"producer": "PRODUCER", "consumer": "CONSUMER", "internal": "INTERNAL", "client": "CLIENT"}


@contextlib.contextmanager
def span(name: str, parent: Mapping[str, str] | None = None, *, kind: str = "internal",
         attributes: Mapping[str, Any] | None = None, links: list[Mapping[str, str]] | None = None) -> Iterator[Any]:
    """A span named ``name``, child of ``parent`` (a carrier) or of the current context; yields None when
    tracing is off. Exceptions mark the span as failed and propagate."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import propagate, trace

    context = propagate.extract(dict(parent)) if parent else None
    span_links = []
    for carrier in links or ():
        linked = trace.get_current_span(propagate.extract(dict(carrier))).get_span_context()
        if linked.is_valid:
            span_links.append(trace.Link(linked))
    with _tracer.start_as_current_span(
        name, context=context, kind=getattr(trace.SpanKind, _KINDS.get(kind, "INTERNAL")),
        attributes={k: v for k, v in (attributes or {}).items() if v is not None}, links=span_links,
    ) as current:
        yield current


def set_error(current: Any, error_type: str, message: str) -> None:
    """Mark a span (from :func:`span`) as failed with the engine's error type and message."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_attribute("metamorph.error_type", error_type)
    current.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"[:500]))


def same_trace(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether two carriers belong to one trace (read through the propagator, not by parsing headers)."""
    from opentelemetry import propagate, trace

    ids = {trace.get_current_span(propagate.extract(dict(c))).get_span_context().trace_id for c in (a, b)}
    return len(ids) == 1


#: Links added to one span at most (a projector batch may start thousands of runs).
MAX_LINKS = 32


def add_links(current: Any, carriers: list[Mapping[str, str]]) -> None:
    """Link a span to the traces of ``carriers`` (distinct, at most MAX_LINKS)."""
    if current is None or not carriers or not hasattr(current, "add_link"):
        return
    from opentelemetry import propagate, trace

    seen: set[int] = set()
    for carrier in carriers:
        linked = trace.get_current_span(propagate.extract(dict(carrier))).get_span_context()
        if linked.is_valid and linked.trace_id not in seen:
            seen.add(linked.trace_id)
            current.add_link(linked)
            if len(seen) >= MAX_LINKS:
                return
