"""OpenTelemetry tracing for Metamorph (docs/API.md §12): ``actors.tracing.configure(tracer_provider=None)``.

The implementation lives in ``eventstore.tracing`` so that the projector, which knows no actors, emits its
batch spans through the same switch; this module is the user-facing name. See that module for the spans,
the Kafka headers and ``METAMORPH_TRACING``.
"""

from eventstore.tracing import (
    Carrier,
    add_links,
    carrier_of,
    configure,
    configure_from_env,
    current_carrier,
    disable,
    enabled,
    headers_of,
    outgoing_headers,
    same_trace,
    set_error,
    span,
)

__all__ = [
    "Carrier", "carrier_of", "configure", "configure_from_env", "current_carrier", "disable", "enabled", "headers_of",
    "outgoing_headers", "same_trace", "set_error", "span", "add_links",
]
