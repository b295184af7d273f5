"""A blocked workflow (docs/API.md §14, issue 11 item 6) is an operator's to-do: the node logs it once at WARNING
and counts it by reason, and a gauge of the blocked workflows feeds MetamorphWorkflowsStillBlocked
(ops/alerts.yml). Real Kafka, a node and the projector."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY

from tests.processes import wait_until
from tests.stack import running_stack


def _blocked_total(workflow_type: str, reason: str) -> float:
    labels = {"workflow_type": workflow_type, "reason": reason}
    return REGISTRY.get_sample_value("metamorph_workflows_blocked_total", labels) or 0.0


def _blocked_now(partitions: int) -> float:
    return sum(REGISTRY.get_sample_value("metamorph_blocked_workflows", {"partition": str(p)}) or 0.0
               for p in range(partitions))


def test_an_unknown_type_is_logged_at_warning_counted_and_gauged(kafka_server, pg_server, tmp_path, caplog):
    if not kafka_server.running:
        kafka_server.start()
    if not pg_server.running:
        pg_server.start()
    caplog.set_level(logging.WARNING, logger="actors.node.loop")
    before = _blocked_total("nowhere.Missing", "UnknownWorkflowType")
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path, prefix="blk") as (client, _node, _ns):
        h = client.start("nowhere.Missing", 1, id="missing-1")
        wait_until(lambda: h.status() == "blocked", 20, "the workflow blocked")
        assert _blocked_total("nowhere.Missing", "UnknownWorkflowType") == before + 1
        warnings = [r for r in caplog.records if r.name == "actors.node.loop" and r.levelno == logging.WARNING
                    and "missing-1" in r.getMessage()]
        assert len(warnings) == 1 and "is blocked: UnknownWorkflowType" in warnings[0].getMessage()
        wait_until(lambda: _blocked_now(2) >= 1, 20, "the blocked-workflows gauge")
        h.terminate("no such type")
        wait_until(lambda: _blocked_now(2) == 0, 20, "the gauge back to zero after terminate")
