"""The README's Quickstart is what CI runs: its second command is `.ci/run`'s only command, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readmes_second_quickstart_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\s+```\n(.*?)```", readme, re.S)
    assert block, "README has no Quickstart code block"
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2, f"the Quickstart must be exactly two commands, not {commands}"
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    steps = [line for line in script if line.strip() and not line.startswith("#")]
    assert steps[-1] == commands[1], f".ci/run ends with {steps[-1]!r}, the README says {commands[1]!r}"
    assert all(s.startswith(("set ", "cd ")) for s in steps[:-1]), f".ci/run does more than the README: {steps}"


def test_setup_installs_what_the_tests_call():
    setup = (ROOT / "tests" / "setup.sh").read_text()
    for tool, package in (("promtool", "prometheus"), ("java", "openjdk-17"), ("mvn", "maven")):
        assert f"command -v {tool}" in setup and package in setup, f"tests/setup.sh does not install {package}"
    assert "kafka_classpath" in setup, "tests/setup.sh does not resolve the Kafka jars"
