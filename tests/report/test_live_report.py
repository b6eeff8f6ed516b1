"""The compliance report against a live lab: Molecule's alerting scenario (its verify runs this
after the suite) or the demo practice (`make demo`, then `make report-test`).

    pytest tests/report/test_live_report.py --ansible-inventory=<a lab inventory>

Every host must be a lab host (cabinet_lab: true) or a demo container (lab_image), reached
through podman: the test breaks a
practice on purpose, opens an incident, stops a machine, and puts all back. It proves what the
unit tests on recorded results cannot: that the read-only audit of real machines feeds the
report (statuses, evidence, a gap with its reason, the fleet page's "what changed", an
incident from the host's register with its 72-hour deadline and draft notification, a machine
that is down shown unreachable and never compliant), that the HTML opens in chromium without an
error or a request leaving it, that the PDF holds the HTML's sections and that junit.xml parses.
Screenshots of the first page and of the fleet page are left in build/report-screenshots/.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "report" / "build.py"
SHOTS = ROOT / "build" / "report-screenshots"
CHROMIUM = os.environ.get("CABINET_CHROMIUM", "/usr/bin/chromium")
MARKER = "-".join(["CABINET", "HARDENING", "TEST", "MARKER", "2026"])  # the lab's antivirus test signature


# ----------------------------------------------------------------------------- the lab
@pytest.fixture(scope="module")
def lab(request):
    source = request.config.getoption("ansible_inventory", default=None)
    assert source, "give the lab's inventory: --ansible-inventory=..."
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[source])
    variables = VariableManager(loader=loader, inventory=manager)
    managed = [h.name for h in manager.get_hosts("cabinet_managed")]
    assert len(managed) >= 2, "the live report test needs two practice machines (one is stopped)"
    containers = {}
    for name in managed:
        hostvars = variables.get_vars(host=manager.get_host(name), include_hostvars=False)
        # A Molecule host (cabinet_lab: true) or one of the demo's containers (lab_image: made by
        # the rig's lab-up.yml); never a client's machine.
        assert hostvars.get("cabinet_lab") is True or "lab_image" in hostvars, \
            f"{name} is neither a lab host (cabinet_lab: true) nor a demo container (lab_image): refusing to break it"
        assert hostvars.get("ansible_connection", "") in ("podman", "containers.podman.podman"), \
            f"{name}: the live test drives containers through podman"
        containers[name] = str(hostvars.get("ansible_host", name))
    folder = Path(source).parent if Path(source).is_file() else Path(source)
    return {"source": Path(source), "folder": folder, "hosts": managed, "containers": containers}


def on(lab, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", "exec", lab["containers"][host], "sh", "-c", command],
                          capture_output=True, text=True, timeout=900, check=False)
    if check:
        assert done.returncode == 0, f"{host}: {command}: {done.stderr}"
    return done


def wait_active(lab, host: str, unit: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = on(lab, host, f"systemctl show -p ActiveState --value {unit}", check=False).stdout.strip()
        if state in ("inactive", "failed"):
            return on(lab, host, f"systemctl show -p Result --value {unit}", check=False).stdout.strip()
        time.sleep(2)
    raise AssertionError(f"{unit} on {host} still {state} after {timeout} s")


def report(lab, out: Path) -> tuple[int, dict, Path]:
    """build.py run on the lab's inventory; its exit status, report.json and folder."""
    done = subprocess.run([sys.executable, str(BUILD), "run", "--inventory", str(lab["source"]), "--out", str(out),
                           "--check-timeout", "120", "--host-budget", "900"],
                          capture_output=True, text=True, timeout=3600, check=False, cwd=ROOT)
    assert done.returncode in (0, 1), f"the report could not be made ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    folders = sorted(p for p in out.glob("*/*") if (p / "report.json").is_file())
    assert folders, done.stdout + done.stderr
    return done.returncode, json.loads((folders[-1] / "report.json").read_text(encoding="utf-8")), folders[-1]


def practice(report: dict, key: str) -> dict:
    return next(p for p in report["practices"] if p["key"] == key)


def host_row(report: dict, key: str, host: str) -> dict | None:
    return next((r for r in practice(report, key)["hosts"] if r["host"] == host), None)


@pytest.fixture(scope="module")
def reports(lab, tmp_path_factory):
    """Three reports of the lab: as it is; with a practice broken and an incident opened; with
    a machine stopped. Everything is put back afterwards."""
    out = tmp_path_factory.mktemp("reports")
    first, second = lab["hosts"][0], lab["hosts"][1]
    found = {"hosts": (first, second), "out": out}
    found["before"] = report(lab, out)
    token = uuid.uuid4().hex[:8]
    on(lab, first, "systemctl stop cabinet-mail-flush.timer")
    try:
        found["incident"] = open_incident(lab, first, token)
        found["broken"] = report(lab, out)
        found["broken_fleet"] = (out / "index.html").read_text(encoding="utf-8")
    finally:
        on(lab, first, "systemctl start cabinet-mail-flush.timer")
    # The lab's incident has served: closed, as the MSP would, so that the next run starts clean.
    on(lab, first, f"/usr/local/sbin/cabinet-incident close {found['incident']['id']} "
                   "--note 'incident de test du rapport (tests/report/test_live_report.py)'", check=False)
    subprocess.run(["podman", "stop", "-t", "5", lab["containers"][second]], capture_output=True, timeout=120, check=True)
    try:
        found["down"] = report(lab, out)
    finally:
        subprocess.run(["podman", "start", lab["containers"][second]], capture_output=True, timeout=120, check=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = on(lab, second, "systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(2)
    return found


def open_incident(lab, host: str, token: str) -> dict:
    """A detection: the lab's antivirus marker planted in a scanned folder and found by the
    scheduled scan where the host has the antivirus and the lab's signature (the demo);
    otherwise the alert the antivirus would raise, through the same command (cabinet-alert)."""
    has_av = on(lab, host, "test -x /usr/local/sbin/cabinet-av && test -s /var/lib/clamav/cabinet-test.ndb",
                check=False).returncode == 0
    if has_av:
        folder = json.loads(on(lab, host, "cat /etc/cabinet/antivirus.json").stdout)["scan_paths"][0].rstrip("/")
        path = f"{folder}/rapport-{token}/courrier {token}.pdf"
        on(lab, host, f"mkdir -p '{folder}/rapport-{token}' && printf '%s\\n' '{MARKER}' > '{path}'")
        on(lab, host, "systemctl reset-failed cabinet-av-scan.service; systemctl start --no-block cabinet-av-scan.service")
        assert wait_active(lab, host, "cabinet-av-scan.service") == "success"
    else:
        path = f"/srv/rapport-{token}/courrier {token}.pdf"
        on(lab, host, f"printf 'Signature : Cabinet.Test.Marker\\nFile : {path}\\n' | /usr/local/sbin/cabinet-alert "
                      f"-p antivirus -s critical --incident virus --incident-key live-{token} "
                      f"-t 'Virus quarantined: Cabinet.Test.Marker in {path}' -")
    listed = json.loads(on(lab, host, "/usr/local/sbin/cabinet-incident list --open --json").stdout)
    mine = [i for i in listed if i["kind"] == "virus" and token in i["title"]]
    assert len(mine) == 1, f"the detection is not in {host}'s register once: {listed}"
    return mine[0]


# ----------------------------------------------------------------------------- the report says what holds
def test_the_lab_as_it_is_reads_as_it_is(reports):
    _, before, folder = reports["before"]
    first, second = reports["hosts"]
    assert before["schema"] == 1 and before["summary"]["unreachable_hosts"] == []
    for host in (first, second):
        row = host_row(before, "alerting", host)
        assert row and row["status"] == "conforme", row
        assert row["counts"]["passed"] >= 8
    # Every check of a machine is counted in its row; the inventory-wide ones (no machine) only
    # when they find a gap.
    counted = sum(sum(r["counts"].values()) for p in before["practices"] for r in p["hosts"])
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    silent = [c for c in results["checks"] if not c["host"] and c["outcome"] not in ("failed", "error")]
    assert counted + len(silent) == sum(before["summary"]["checks"].values()) == len(results["checks"]) > 100
    suites = ET.parse(folder / "junit.xml").getroot()  # parses, and holds the audit's checks
    assert sum(int(s.get("tests", 0)) for s in suites.iter("testsuite")) >= counted


def test_a_broken_practice_is_a_gap_with_its_reason_and_the_fleet_page_marks_it(reports):
    _, broken, folder = reports["broken"]
    first, _ = reports["hosts"]
    row = host_row(broken, "alerting", first)
    assert row["status"] == "ecart"
    gap = next(g for g in row["gaps"] if g["check"] == "test_alerting.py::test_flush_timer_is_active")
    assert gap["si_ecart"] and gap["qui"] and gap["reason"]
    page = html.unescape((folder / "rapport.html").read_text(encoding="utf-8"))
    assert gap["si_ecart"] in page and gap["reason"] in page
    # The fleet page written with that report marks the change since the previous one.
    fleet = html.unescape(reports["broken_fleet"])
    assert f"nouvel écart : {first} – {gap['libelle']}" in fleet, "the fleet page does not show the new gap"


def test_a_detection_is_an_open_incident_with_its_deadline_and_draft(reports):
    _, broken, folder = reports["broken"]
    incident = reports["incident"]
    shown = [i for i in broken["incidents"] if i["id"] == incident["id"]]
    assert len(shown) == 1, [i["id"] for i in broken["incidents"]]
    detected = dt.datetime.strptime(incident["detected"], "%Y-%m-%dT%H:%M:%SZ")
    assert shown[0]["deadline"] == (detected + dt.timedelta(hours=72)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert not shown[0]["overdue"] and shown[0]["host"] == reports["hosts"][0]
    page = html.unescape((folder / "rapport.html").read_text(encoding="utf-8"))
    assert "Brouillon de notification à la CNIL" in page and incident["id"] in page
    assert f"cabinet-incident close {incident['id']}" in page


def test_a_machine_that_is_down_is_unreachable_never_compliant(reports):
    status, down, _ = reports["down"]
    _, second = reports["hosts"]
    assert status == 1, "a report with an unreachable machine must not exit 0"
    assert down["summary"]["unreachable_hosts"] == [second]
    for p in down["practices"]:
        row = host_row(down, p["key"], second)
        assert row is None or row["status"] == "injoignable", (p["key"], row)
    assert practice(down, "alerting")["status"] in ("injoignable", "ecart")


# ----------------------------------------------------------------------------- what the practice opens
def test_the_html_opens_in_chromium_alone_and_the_pdf_holds_its_sections(reports):
    _, _, folder = reports["broken"]
    page = (folder / "rapport.html").read_text(encoding="utf-8")
    headings = [" ".join(html.unescape(re.sub(r"<[^>]+>", "", h)).split())
                for h in re.findall(r"<h2[^>]*>(.*?)</h2>", page, re.S)]
    assert len(headings) >= 4, headings
    pdftotext = shutil.which("pdftotext")
    assert pdftotext, "pdftotext missing (poppler-utils; scripts/setup-host.sh installs it)"
    text = " ".join(subprocess.run([pdftotext, str(folder / "rapport.pdf"), "-"], capture_output=True, text=True,
                                   check=True).stdout.split())
    missing = [h for h in headings if h not in text]
    assert missing == [], f"sections of the HTML missing from the PDF: {missing}"
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for source, shot, size in ((folder / "rapport.html", "rapport-first-page.png", (1000, 1300)),
                                   (reports["out"] / "index.html", "fleet-page.png", (1400, 420))):
            requests, errors = [], []
            tab = browser.new_page(viewport={"width": size[0], "height": size[1]})
            tab.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            tab.on("request", lambda r, requests=requests: requests.append(r.url))
            tab.goto(source.as_uri())
            tab.wait_for_load_state("load")
            tab.screenshot(path=str(SHOTS / shot))
            # Every link of the fleet page leads to a report that exists.
            links = tab.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
            tab.close()
            assert errors == [], f"{source.name}: {errors}"
            assert requests == [source.as_uri()], f"{source.name} loads more than itself: {requests}"
            for link in links:
                target = link.split("#")[0]
                if target:
                    assert (source.parent / target).is_file(), f"{source.name}: broken link {link}"
        browser.close()
