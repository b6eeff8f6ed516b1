"""Every command of make demo's closing guide, run as printed, so that the guide never goes stale.

    pytest tests/demo/test_tour.py --ansible-inventory=<a lab inventory>

The guide (scripts/tour.py guide) names make targets; each one is run here with make, as a
person would type it, against the lab given (TOUR_INVENTORY points it there). In CI, each
Molecule scenario whose lab has what a step needs runs that step after its own suite
(CABINET_VERIFY_EXTRA): alerting the mailbox, ups_monitoring the power cut and its return,
antivirus the planted virus, backup the restore. After make demo, `make demo-tour-test` runs
them all on the demo. That the guide names only these targets, and that a step refuses a
machine that is not a lab's, is tested without a lab (tests/unit/test_tour.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOUR = ROOT / "scripts" / "tour.py"


@pytest.fixture(scope="module")
def inventory(request) -> str:
    source = request.config.getoption("ansible_inventory", default=None)
    assert source, "give the lab's inventory: --ansible-inventory=..."
    return source


def make(command: str, inventory: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The guide's command as printed, with the lab's inventory instead of the demo's."""
    argv = command.split() + [f"TOUR_INVENTORY={inventory}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    print(f"$ {command}\n{done.stdout}{done.stderr}")
    return done


def test_demo_mail_lists_what_the_msp_received(inventory):
    done = make("make demo-mail", inventory)
    assert done.returncode == 0
    listed = re.findall(r"^     \d\d/\d\d \d\d:\d\d:\d\d  \S+  \[[\w-]+, (?:info|warning|critical|-)\]  .+$", done.stdout, re.M)
    count = int(re.search(r"==> (\d+) alert\(s\) in the MSP's mailbox", done.stdout).group(1))
    # Every lab's roles send alerts by the time its suite has run (a relay test, a stale state...).
    assert count > 0 and len(listed) == min(count, 20), done.stdout
    assert "probe-" not in "".join(listed), "the audit's own test messages are listed as alerts"


def test_demo_power_cut_alerts_and_starts_the_timer_then_power_back_cancels_it(inventory):
    cut = make("make demo-power-cut", inventory)
    back = make("make demo-power-back", inventory)   # the mains back whatever the cut showed
    assert cut.returncode == 0
    assert re.search(r"\[ups_monitoring, warning\]  .*UPS on battery", cut.stdout), cut.stdout
    assert re.search(r"^     \d+ \S*upssched$", cut.stdout, re.M), "upssched's timer is not shown running"
    assert back.returncode == 0
    assert re.search(r"\[ups_monitoring, \w+\]  .*UPS back on mains power", back.stdout), back.stdout
    assert "timer cancelled, no shutdown" in back.stdout


def test_demo_virus_is_quarantined_and_alerted(inventory):
    done = make("make demo-virus", inventory)
    assert done.returncode == 0
    assert "scan: success" in done.stdout and "is gone; the quarantine" in done.stdout
    assert re.search(r"^     \d\d:\d\d  600 root  \S+piece-jointe-\S+\.pdf$", done.stdout, re.M), "the quarantined file is not root-only"
    mailbox = done.stdout.split("the MSP's mailbox receives:", 1)[1]
    assert re.search(r"^     \d\d/\d\d \d\d:\d\d:\d\d  \S+  \[antivirus, (warning|critical)\]  ", mailbox, re.M), done.stdout


def test_demo_restore_brings_back_a_file_from_each_copy(inventory):
    done = make("make demo-restore", inventory)
    assert done.returncode == 0
    # A patient's file name may hold spaces and accents ("Compte rendu d'échographie – Mme Dupré.pdf").
    restored = re.findall(r"^    restored /.+ from \S+: SHA-256 as archived \(.+\)$", done.stdout, re.M)
    copies = re.findall(r"^==> From the (\w+) copy, on ", done.stdout, re.M)
    assert len(copies) >= 2 and len(restored) == len(copies), done.stdout
