"""Projections: the event log turned into queryable PostgreSQL views (docs/DESIGN.md "Projections").

``projections`` knows events (it imports ``eventstore``) and nothing of actors: the dependency points one
way, so the read side can be used by clients and the HTTP API without loading the engine.
"""

from .db import FINAL_STATUSES, TERMINAL_STATUSES, connect, notify_channel, pool, schema_name
from .migrate import migrate
from .pending import record_pending
from .projector import Projector, rebuild

__all__ = [
    "FINAL_STATUSES",
    "TERMINAL_STATUSES",
    "Projector",
    "connect",
    "migrate",
    "notify_channel",
    "pool",
    "rebuild",
    "record_pending",
    "schema_name",
]
