"""The Quickstart's first command runs `metamorph demo`; this keeps that demo from rotting."""

from __future__ import annotations

from actors.interfaces.demo import main


def test_the_demo_runs_the_tutorial_order_end_to_end(capsys):
    assert main() == 0
    out = capsys.readouterr().out
    assert "query current_stage -> 'awaiting approval'" in out
    assert "ActivityAttemptFailed" in out and "SignalReceived" in out and "TimerFired" in out
    assert "status 'completed'; result: {'order': 'A-1'" in out
    assert "stopped the node, the projector, the broker and PostgreSQL" in out
