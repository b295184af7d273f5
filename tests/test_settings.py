"""Configuration is read in one place (eventstore/settings.py): declared, parsed once, documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eventstore import settings

ROOT = Path(__file__).resolve().parents[1]


def test_no_module_reads_metamorph_variables_itself() -> None:
    readers = []
    for pkg in ("actors", "eventstore", "projections"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name == "settings.py":
                continue
            text = path.read_text()
            if re.search(r"environ(\.get)?\(\s*[\"']METAMORPH_|environ\[\s*[\"']METAMORPH_|getenv\(", text):
                readers.append(str(path.relative_to(ROOT)))
    assert not readers, f"read METAMORPH_* through eventstore.settings, not os.environ: {readers}"


def test_every_variable_the_code_names_is_declared_and_documented() -> None:
    named = set()
    for pkg in ("actors", "eventstore", "projections"):
        for path in (ROOT / pkg).rglob("*.py"):
            named |= set(re.findall(r"\bMETAMORPH_[A-Z_]*[A-Z]\b", path.read_text()))
    undeclared = named - set(settings.SETTINGS) - {"METAMORPH_WEBHOOK", "METAMORPH_TEST_BROKER"}
    assert not undeclared, f"variables used but not declared in eventstore/settings.py: {sorted(undeclared)}"
    readme = (ROOT / "README.md").read_text()
    assert not [n for n in settings.SETTINGS if n not in readme], "every setting is documented in the README"


def test_values_are_parsed_at_call_time_and_bad_ones_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METAMORPH_SESSION_TIMEOUT", raising=False)
    assert settings.get("METAMORPH_SESSION_TIMEOUT") == 10.0
    monkeypatch.setenv("METAMORPH_SESSION_TIMEOUT", "3")
    assert settings.get("METAMORPH_SESSION_TIMEOUT") == 3.0
    monkeypatch.setenv("METAMORPH_SESSION_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="METAMORPH_SESSION_TIMEOUT='soon' is not valid"):
        settings.get("METAMORPH_SESSION_TIMEOUT")
    monkeypatch.setenv("METAMORPH_TRACING", "maybe")
    with pytest.raises(ValueError, match="METAMORPH_TRACING"):
        settings.get("METAMORPH_TRACING")
    with pytest.raises(KeyError):
        settings.get("METAMORPH_NOT_A_SETTING")
