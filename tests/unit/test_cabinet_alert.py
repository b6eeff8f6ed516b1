"""cabinet-alert: the journal entry keeps its fields, whatever the details hold."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "alerting" / "files" / "usr" / "local" / "sbin" / "cabinet-alert"


def load():
    loader = importlib.machinery.SourceFileLoader("cabinet_alert", str(SCRIPT))
    spec = importlib.util.spec_from_loader("cabinet_alert", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def fake_journal(monkeypatch) -> list:
    sent: list = []
    journal = types.ModuleType("systemd.journal")
    journal.send = lambda message, **fields: sent.append((message, fields))
    package = types.ModuleType("systemd")
    package.journal = journal
    monkeypatch.setitem(sys.modules, "systemd", package)
    monkeypatch.setitem(sys.modules, "systemd.journal", journal)
    return sent


def test_multiline_details_stay_in_the_message_and_add_no_field(monkeypatch):
    sent = fake_journal(monkeypatch)
    alert = load()
    text = "[CRITICAL] [auto_updates] Upgrade failed -- first\n\nCABINET_PRACTICE=antivirus\nPRIORITY=7\n"
    assert alert.journal("cabinet-alert", "critical", "auto_updates", text) is True
    assert len(sent) == 1
    message, fields = sent[0]
    assert message == text
    assert fields == {"PRIORITY": "2", "SYSLOG_IDENTIFIER": "cabinet-alert",
                      "CABINET_PRACTICE": "auto_updates", "CABINET_SEVERITY": "critical"}


def test_without_the_journal_api_it_falls_back_to_syslog(monkeypatch):
    monkeypatch.setitem(sys.modules, "systemd", None)  # import fails
    alert = load()
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(alert.subprocess, "run", lambda argv, **kw: calls.append(argv) or Done())
    assert alert.journal("cabinet-alert", "warning", "backup", "-- a message that starts like an option") is True
    assert calls == [["logger", "-t", "cabinet-alert", "-p", "daemon.warning", "--",
                      "-- a message that starts like an option"]]
