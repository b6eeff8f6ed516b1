#!/usr/bin/env python3
"""The compliance report: what holds, per practice and machine, in French for the practice and
as data for the MSP, and the fleet page over every client reported.

    tests/report/build.py run --inventory inventories/<client> [--inventory ...] [--out reports]
    tests/report/build.py fleet [--out reports]          (re)writes reports/index.html only

`run` audits each inventory with the testinfra suites in read-only mode (tests/integration,
--read-only: no check that changes a host runs, even on lab hosts), then writes
reports/<client>/<stamp>/: report.json (schema below), rapport.html, rapport.pdf (from the same
HTML, by WeasyPrint), junit.xml (pytest's), results.json (the raw checks), and then
reports/index.html. <stamp> is the UTC date and time, YYYY-MM-DD-HHMMSS, so that two reports of
one day are both kept and ordered. With --from-audit FOLDER (make demo), no audit runs: the
report is made from the whole one pytest already wrote in FOLDER on this same inventory (only
its results.json is copied; reusable_audit says what "whole" means), dated when that audit
ended, and says whether it was read-only. Exit status: 0 every practice holds on every host, 1 a gap
or an unreachable host somewhere, 2 a report could not be made.

Everything the report says comes from three files: the checks' results (results.json, written
by tests/integration/conftest.py's --report-json), tests/integration/controls.yml (each check's
practice, references and French wording) and tests/report/hygiene.yml (the ANSSI hygiene guide's
coverage). build_report() is a pure function of them, which the unit tests drive with recorded
results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import tempfile
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import jinja2
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CONTROLS = ROOT / "tests" / "integration" / "controls.yml"
HYGIENE = HERE / "hygiene.yml"
SCHEMA = 1
NOT_APPLICABLE = "n/a: "
INVENTORY_ROW = "(inventaire)"  # checks of the inventory itself, not of a host (shown only when they fail)
INCIDENT_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}|line-[0-9]{1,9}")  # fullmatch
INCIDENTS_SHOWN = 30  # open incidents the report details (the newest); the rest are counted
INCIDENTS_LABEL = "incidents"  # the evidence label under which the alerting suite hands over the register
INCIDENT_HOURS = 72

# Statuses, worst first: a practice's status across machines is its worst one.
STATUSES = {
    "ecart": "écart",
    "injoignable": "injoignable",
    "non_verifie": "non vérifié",
    "conforme": "conforme",
    "non_applicable": "non applicable",
}
STATUS_MEANING = {
    "ecart": "au moins un contrôle a échoué : il y a quelque chose à corriger",
    "injoignable": "la machine n'a pas répondu : rien n'a pu être vérifié, ce n'est pas une preuve de conformité",
    "non_verifie": "les contrôles qui s'appliquent n'ont pas pu être faits sans modifier la machine",
    "conforme": "tous les contrôles faits ont réussi",
    "non_applicable": "cette pratique ne concerne pas cette machine",
}
QUI = {"prestataire": "le prestataire", "cabinet": "le cabinet", "prestataire et cabinet": "le prestataire et le cabinet"}


# ----------------------------------------------------------------------------- inputs
def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def worst(statuses: list[str]) -> str:
    order = list(STATUSES)
    return min(statuses, key=order.index) if statuses else "non_applicable"


def check_status(check: dict) -> str:
    """One check's contribution: passed, failed, unreachable, n/a or not run."""
    outcome, reason = check["outcome"], check.get("reason", "")
    if outcome in ("failed", "error"):
        return "unreachable" if check.get("unreachable") else "failed"
    if outcome == "passed":
        return "passed"
    if outcome == "skipped" and reason.startswith(NOT_APPLICABLE):
        return "not_applicable"
    return "not_run"  # a lab-only proof, a read-only skip, an expected failure


def parse_time(stamp: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- the report
def build_report(results: dict, controls: dict, hygiene: dict, meta: dict) -> dict:
    """report.json's content. ``meta``: client, generated (UTC ISO), toolkit_version,
    inventory_sha256; ``results``: conftest's --report-json (schema 1, with its inventory)."""
    mapping, defs, practices = controls["checks"], controls["controls"], controls["practices"]
    inventory = results.get("inventory", {})
    hosts_info: dict[str, dict] = inventory.get("hosts", {})
    now = parse_time(meta["generated"]) or dt.datetime.now(dt.timezone.utc)

    per: dict[tuple[str, str], list[dict]] = defaultdict(list)
    unreachable: dict[str, str] = {}
    unmapped: list[str] = []
    incidents: list[dict] = []
    for check in results["checks"]:
        control_id = mapping.get(check["check"])
        if control_id is None:
            unmapped.append(check["check"])
            continue
        host = check.get("host") or INVENTORY_ROW
        state = check_status(check)
        if state == "unreachable":
            unreachable.setdefault(host, check["unreachable"])
        evidence = []
        for label, value in check.get("evidence", []):
            if label == INCIDENTS_LABEL:
                incidents += register_entries(value, host, hosts_info, inventory.get("offsite_repositories", []))
            else:
                evidence.append([label, value])
        per[(defs[control_id]["practice"], host)].append({**check, "control": control_id, "state": state,
                                                          "evidence": evidence})
    if unmapped:
        raise ValueError(f"checks without a mapping in {CONTROLS.name}: {', '.join(sorted(set(unmapped)))}")

    hosts = sorted(set(hosts_info) | {h for _, h in per} - {INVENTORY_ROW})
    practice_rows = []
    for key, info in practices.items():
        rows = []
        for host in [*hosts, INVENTORY_ROW]:
            checks = per.get((key, host), [])
            if host == INVENTORY_ROW and not any(c["state"] == "failed" for c in checks):
                continue  # an inventory-wide check counts when it finds a gap, not otherwise
            if not checks:
                continue
            if any(c["state"] == "failed" for c in checks):
                status = "ecart"  # a gap found stays a gap, whatever happened to the host after
            elif any(c["state"] == "unreachable" for c in checks):
                status = "injoignable"  # some of this practice's checks could not run: not compliant
            elif any(c["state"] == "passed" for c in checks):
                status = "conforme"
            elif any(c["state"] == "not_run" for c in checks):
                status = "non_verifie"
            else:
                status = "non_applicable"
            counts = {s: sum(c["state"] == s for c in checks) for s in ("passed", "failed", "not_applicable", "not_run")}
            gaps = [{"control": c["control"], "check": c["check"], "reason": c["reason"],
                     "libelle": defs[c["control"]]["libelle"], "si_ecart": defs[c["control"]]["si_ecart"],
                     "qui": defs[c["control"]].get("qui", "prestataire"), "refs": merge_refs([defs[c["control"]].get("refs", {})])}
                    for c in checks if c["state"] == "failed"]
            evidence = []
            for c in checks:
                for item in c["evidence"]:
                    if item not in evidence:
                        evidence.append(item)
            held = sorted({c["control"] for c in checks if c["state"] == "passed"} - {g["control"] for g in gaps})
            rows.append({"host": host, "status": status, "counts": counts, "gaps": gaps, "evidence": evidence,
                         "controls_held": held, "unreachable": unreachable.get(host, "")})
        refs = merge_refs(defs[c].get("refs", {}) for c in defs if defs[c]["practice"] == key)
        practice_rows.append({"key": key, "titre": info["titre"], "pratique": info["pratique"],
                              "status": worst([r["status"] for r in rows]) if rows else "non_applicable",
                              "hosts": rows, "refs": refs})

    open_incidents = []
    for item in incidents:
        if item["status"] == "closed":
            continue
        detected = parse_time(item["detected"])
        deadline = detected + dt.timedelta(hours=INCIDENT_HOURS) if detected else None
        left = (deadline - now).total_seconds() / 3600 if deadline else None
        open_incidents.append({**item, "deadline": deadline.strftime("%Y-%m-%dT%H:%M:%SZ") if deadline else "",
                               "hours_left": round(left, 1) if left is not None else None,
                               "overdue": left is not None and left < 0,
                               "backups": backup_evidence(practice_rows, item.get("host", ""))})
    open_incidents.sort(key=lambda i: i["detected"])
    hidden = max(0, len(open_incidents) - INCIDENTS_SHOWN)

    summary = {p["key"]: p["status"] for p in practice_rows}
    counts = defaultdict(int)
    for checks in per.values():
        for c in checks:
            counts[c["state"]] += 1
    actions = top_actions(practice_rows)
    return {
        "schema": SCHEMA,
        "generated": meta["generated"],
        "client": meta["client"],
        "practice_name": inventory.get("practice_name") or meta["client"],
        "toolkit_version": meta.get("toolkit_version", "?"),
        "inventory_sha256": meta.get("inventory_sha256", ""),
        # (results written before this key existed came from build.py's own read-only audit)
        "read_only": bool(results.get("read_only", True)),
        "summary": {"status": worst(list(summary.values())), "practices": summary,
                    "held": sum(s == "conforme" for s in summary.values()),
                    "applicable": sum(s != "non_applicable" for s in summary.values()),
                    "checks": dict(counts), "open_incidents": len(open_incidents), "incidents_not_detailed": hidden,
                    "unreachable_hosts": sorted(unreachable)},
        "hosts": [{"name": h, "reachable": h not in unreachable, "reason": unreachable.get(h, ""),
                   "groups": hosts_info.get(h, {}).get("groups", [])} for h in hosts],
        "practices": practice_rows,
        "actions": actions,
        "incidents": open_incidents[hidden:],
        "closed_incidents": [i for i in incidents if i["status"] == "closed"],
        "hygiene": hygiene_summary(hygiene),
        "statuses": STATUSES,
    }


def register_entries(value: Any, audited: str, hosts_info: dict, repositories: list[str]) -> list[dict]:
    """The incidents a host's register handed over (the alerting suite's evidence), as the
    report may show them: a host is not trusted to shape the report, so only known fields of
    known types are kept, bounded, the machine is the audited one whatever the entry says, and
    an id that is not the register's own form is not shown as one (the report prints it in a
    command to copy). On the MSP's shared off-site server, an incident about another
    practice's repository is not this practice's."""
    try:
        found = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        found = None
    if not isinstance(found, list):
        return [{"id": "", "status": "unreadable", "detected": "", "kind": "?", "nature": "Registre illisible",
                 "title": "le registre des incidents de cette machine n'a pas pu être lu", "details": "", "about": "",
                 "host": audited}]
    server = "backup_offsite" in hosts_info.get(audited, {}).get("groups", [])
    kept, closed = [], 0
    for entry in reversed(found[-20000:]):  # newest first: every open incident, the 200 newest closed ones
        if not isinstance(entry, dict):
            continue
        text = {k: str(entry.get(k, ""))[:1000] for k in ("id", "status", "detected", "kind", "nature", "title",
                                                         "details", "about", "closed", "note")}
        if server and text["about"] and text["about"] not in repositories:
            continue
        if server and not text["about"]:
            text["details"] = ""  # the shared server's own incident: its details may name other practices
        if text["status"] == "closed":
            closed += 1
            if closed > 200:
                continue
        if not INCIDENT_ID.fullmatch(text["id"]):
            text["id"] = ""
        if text["status"] not in ("open", "closed"):
            text["status"] = "unreadable"
        text["nature"] = text["nature"] or "Incident"
        kept.append({**text, "host": audited})
    return kept[::-1]


def merge_refs(all_refs) -> dict:
    merged: dict[str, list] = {"hygiene": [], "bp028": [], "other": []}
    for refs in all_refs:
        for kind, values in refs.items():
            for v in values or []:
                if v not in merged.setdefault(kind, []):
                    merged[kind].append(v)
    merged["hygiene"].sort()
    merged["bp028"].sort(key=lambda r: int(str(r).lstrip("R") or 0))
    return merged  # every kind, empty or not: the templates test them


def backup_evidence(practice_rows: list[dict], host: str) -> list[list[str]]:
    for practice in practice_rows:
        if practice["key"] == "backup":
            for row in practice["hosts"]:
                if row["host"] == host:
                    return row["evidence"]
    return []


def top_actions(practice_rows: list[dict]) -> list[dict]:
    """The first page's to-do list: one line per control in gap, with its machines."""
    found: dict[str, dict] = {}
    for practice in practice_rows:
        for row in practice["hosts"]:
            if row["status"] == "injoignable":
                item = found.setdefault(f"unreachable-{row['host']}", {
                    "practice": "Toutes", "libelle": f"La machine {row['host']} n'a pas pu être vérifiée.",
                    "si_ecart": "Le prestataire vérifie qu'elle est allumée et joignable, puis relance le rapport.",
                    "qui": "prestataire", "hosts": [row["host"]]})
            for gap in row["gaps"]:
                item = found.setdefault(gap["control"], {"practice": practice["titre"], "libelle": gap["libelle"],
                                                         "si_ecart": gap["si_ecart"], "qui": gap["qui"], "hosts": []})
                if row["host"] not in item["hosts"]:
                    item["hosts"].append(row["host"])
    return list(found.values())


def hygiene_summary(hygiene: dict) -> dict:
    counts = defaultdict(int)
    for m in hygiene["measures"]:
        counts[m["statut"]] += 1
    return {"source": hygiene["source"], "statuses": hygiene["statuses"], "counts": dict(counts),
            "measures": hygiene["measures"]}


# ----------------------------------------------------------------------------- rendering
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fr_date"] = fr_date
    env.filters["qui"] = lambda value: QUI.get(value, value)
    env.filters["refs_fr"] = refs_fr
    return env


MONTHS = ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
          "novembre", "décembre"]


def fr_date(stamp: str, with_time: bool = True) -> str:
    """2026-12-07T10:05:00Z -> "7 décembre 2026 à 10 h 05 (UTC)"."""
    moment = parse_time(stamp)
    if moment is None:
        return stamp or "?"
    day = f"{moment.day} {MONTHS[moment.month - 1]} {moment.year}"
    return f"{day} à {moment.hour} h {moment.minute:02d} (UTC)" if with_time else day


def refs_fr(refs: dict) -> str:
    """References in words: "guide d'hygiène de l'ANSSI, mesures 10, 11 ; ANSSI-BP-028, R31 ; CNIL 2022-100"."""
    parts = []
    if refs.get("hygiene"):
        many = len(refs["hygiene"]) > 1
        parts.append(f"guide d'hygiène de l'ANSSI, mesure{'s' if many else ''} {', '.join(map(str, refs['hygiene']))}")
    if refs.get("bp028"):
        parts.append(f"ANSSI-BP-028, {', '.join(refs['bp028'])}")
    parts += [str(o) for o in refs.get("other", [])]
    return " ; ".join(parts)


def render_html(report: dict) -> str:
    return environment().get_template("rapport.html.j2").render(r=report, meaning=STATUS_MEANING)


def write_pdf(html_text: str, path: Path) -> None:
    from weasyprint import HTML  # imported here: the rest of the builder does not need it

    # No base URL: the page has no external resource, and WeasyPrint must fetch nothing.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        HTML(string=html_text, url_fetcher=refuse_fetch).write_pdf(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def refuse_fetch(url: str, *args, **kwargs):  # noqa: ARG001 - WeasyPrint's signature
    raise ValueError(f"the report must not load {url}: it is self-contained")


# ----------------------------------------------------------------------------- the fleet page
def previous_reports(out: Path) -> dict[str, list[Path]]:
    """Each client's report.json files, newest first."""
    found: dict[str, list[Path]] = {}
    for client in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        stamps = sorted((d for d in client.iterdir() if (d / "report.json").is_file()), reverse=True)
        if stamps:
            found[client.name] = [d / "report.json" for d in stamps]
    return found


def gap_keys(report: dict) -> dict[tuple[str, str], str]:
    keys = {}
    for practice in report["practices"]:
        for row in practice["hosts"]:
            for gap in row["gaps"]:
                keys[(row["host"], gap["control"])] = gap["libelle"]
            if row["status"] == "injoignable":
                keys[(row["host"], "injoignable")] = "machine injoignable"
    return keys


def changes(current: dict, previous: dict | None) -> dict:
    """Gaps that appeared or were fixed since the previous report of the same practice."""
    if previous is None:
        return {"previous": None, "new": [], "fixed": []}
    now, before = gap_keys(current), gap_keys(previous)
    return {"previous": previous["generated"],
            "new": [{"host": h, "control": c, "libelle": now[(h, c)]} for h, c in sorted(set(now) - set(before))],
            "fixed": [{"host": h, "control": c, "libelle": before[(h, c)]} for h, c in sorted(set(before) - set(now))]}


ENFORCEMENT_RESULTS = {
    "ok": "appliquée, rien à changer",
    "changed": "appliquée",
    "unreachable": "incomplète : machine injoignable",
    "failed": "échec",
    "timeout": "interrompue (trop longue)",
    "interrupted": "interrompue",
    "error": "erreur",
}


def enforcement(out: Path) -> dict:
    """Each client's last run of scripts/fleet.py (make fleet): <out>/enforcement.json, if any.

    Written by the MSP's own runner on the controller, yet read as data: anything that is not
    the expected shape is left out, never shown raw."""
    try:
        data = json.loads((out / "enforcement.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    clients = data.get("clients") if isinstance(data, dict) else None
    if not isinstance(clients, dict):
        return {}
    kept = {}
    for client, run in clients.items():
        if not isinstance(run, dict) or run.get("result") not in ENFORCEMENT_RESULTS:
            continue
        def names(key: str) -> list[str]:
            value = run.get(key)
            return [str(h) for h in value][:50] if isinstance(value, list) else []
        hosts = run.get("hosts") if isinstance(run.get("hosts"), int) and not isinstance(run.get("hosts"), bool) else 0
        libelle = ENFORCEMENT_RESULTS[run["result"]]
        if run["result"] == "unreachable" and hosts and len(names("hosts_unreachable")) >= hosts:
            libelle = "non appliquée : aucune machine joignable"
        kept[str(client)] = {
            "finished": str(run.get("finished", "")),
            "playbook": str(run.get("playbook", "")),
            "result": run["result"],
            "libelle": libelle,
            "changed": run.get("changed") if isinstance(run.get("changed"), int) and not isinstance(run.get("changed"), bool) else 0,
            "hosts_unreachable": names("hosts_unreachable"),
            "hosts_lost": names("hosts_lost"),
            "hosts_failed": names("hosts_failed"),
        }
    return kept


def build_fleet(out: Path, practices: dict) -> dict:
    rows = []
    runs = enforcement(out)
    for client, paths in previous_reports(out).items():
        current = json.loads(paths[0].read_text(encoding="utf-8"))
        previous = json.loads(paths[1].read_text(encoding="utf-8")) if len(paths) > 1 else None
        rows.append({"client": client, "practice_name": current["practice_name"], "generated": current["generated"],
                     "link": os.path.relpath(paths[0].parent / "rapport.html", out),
                     "status": current["summary"]["status"], "practices": current["summary"]["practices"],
                     "open_incidents": current["summary"]["open_incidents"],
                     "unreachable": current["summary"]["unreachable_hosts"],
                     "changes": changes(current, previous), "enforcement": runs.get(client)})
    # A client enforced by make fleet but not reported yet still has its row.
    for client in sorted(set(runs) - {row["client"] for row in rows}):
        rows.append({"client": client, "practice_name": client, "generated": None, "link": None,
                     "status": "non_verifie", "practices": {k: "non_verifie" for k in practices},
                     "open_incidents": 0, "unreachable": [], "changes": None, "enforcement": runs[client]})
    return {"schema": SCHEMA, "practices": {k: v["titre"] for k, v in practices.items()}, "rows": rows}


def write_fleet(out: Path, controls: dict) -> Path:
    fleet = build_fleet(out, controls["practices"])
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    page = environment().get_template("index.html.j2").render(f=fleet, statuses=STATUSES, generated=generated)
    write_text(out / "index.html", page)
    write_text(out / "fleet.json", json.dumps(fleet, ensure_ascii=False, indent=1))
    return out / "index.html"


# ----------------------------------------------------------------------------- running the audit
def write_text(path: Path, text: str) -> None:
    """Atomically, through a new file of a random name (never a planted one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def inventory_file(source: Path) -> Path:
    """A client's folder's hosts.yml; otherwise what was given (a file, or a folder Ansible reads whole)."""
    return source / "hosts.yml" if (source / "hosts.yml").is_file() else source


def inventory_hash(source: Path) -> str:
    """SHA-256 over the inventory's files (names and contents, vault-encrypted ones as they
    are): which inventory a report was made from, without showing any of it."""
    folder = source if source.is_dir() else source.parent
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def toolkit_version() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--tags"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "inconnue"


def suite_files() -> list[Path]:
    """The suites an audit runs: every tests/integration/test_*.py."""
    return sorted((ROOT / "tests" / "integration").glob("test_*.py"))


def audit(source: Path, folder: Path, check_timeout: int, workers: int, host_budget: int = 1800) -> int:
    """Run the suites read-only against one inventory; pytest's exit status (0 or 1 is a result)."""
    suites = [str(p) for p in suite_files()]
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rN", "--no-header",
            f"--ansible-inventory={inventory_file(source)}", "--read-only", f"--check-timeout={check_timeout}",
            f"--host-budget={host_budget}",
            # No compared values in failures (--assert=plain), no traceback in the log (--tb=no,
            # -rN): what a failure says is the conftest's reason, with the secrets masked.
            "--assert=plain", "--tb=no",
            f"--report-json={folder / 'results.json'}", f"--junitxml={folder / 'junit.xml'}",
            "-o", "junit_family=xunit2", "-o", "junit_suite_name=cabinet-hardening"]
    if workers > 1:
        argv += ["-n", str(workers), "--dist", "loadgroup"]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PY_COLORS": "0"}
    env.pop("ANSIBLE_LOG_PATH", None)  # the audit reads no Ansible log (its leak checks say "not run")
    with open(folder / "audit.log", "w", encoding="utf-8") as log:
        done = subprocess.run([*argv, *suites], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    return done.returncode


CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def reusable_audit(source: Path, audit_dir: Path) -> tuple[dt.datetime, str]:
    """An audit already run on this inventory (make demo's: pytest with --report-json into
    ``audit_dir``) can stand for a new one only if it is whole and of this inventory as it is:
    this very inventory file, every suite and every collected check reported, no selection,
    pytest's verdict 0 or 1 (not an interruption or an internal error), and no file of the
    inventory changed since it began. Otherwise it is refused, before any report folder is made.
    Returns when it ended (the report's date is the audit's) and the results as read, which are
    what the report's folder gets (read once: what was checked is what is copied)."""
    results_path = audit_dir / "results.json"
    if results_path.is_symlink():
        raise RuntimeError(f"{results_path} is a symbolic link: refused")
    text = results_path.read_text(encoding="utf-8")
    results = json.loads(text)
    audited, run = results.get("inventory_source", ""), results.get("audit") or {}
    checks = results.get("checks", [])
    suites = [p.name for p in suite_files()]
    problems = []
    if not audited or Path(audited) != inventory_file(source).resolve():
        problems.append(f"it is the audit of {audited or 'an unnamed inventory'}, not of {inventory_file(source).resolve()}")
    if run.get("exitstatus") not in (0, 1):
        problems.append(f"pytest ended with {run.get('exitstatus', 'no recorded')} status (0 or 1 is a whole audit)")
    if run.get("collected") != len(checks) or run.get("deselected") or run.get("selection"):
        problems.append(f"{len(checks)} checks reported of {run.get('collected', '?')} collected, "
                        f"selection: {bool(run.get('selection') or run.get('deselected'))}")
    if run.get("suites") != suites:
        problems.append(f"suites audited: {', '.join(run.get('suites') or []) or 'none'} (all: {', '.join(suites)})")
    started = parse_time(run.get("started", ""))
    finished = parse_time(run.get("finished", ""))
    if started is None or finished is None:
        problems.append("no start or end time recorded")
    else:
        folder = source if source.is_dir() else source.parent
        changed = [p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime > started.timestamp()]
        if changed:
            problems.append(f"{len(changed)} inventory file(s) changed since it began ({changed[0]})")
    if problems:
        raise RuntimeError(f"{results_path} cannot stand for an audit: " + "; ".join(problems))
    return finished, text


def report_one(source: Path, out: Path, controls: dict, hygiene: dict, check_timeout: int, workers: int,
               host_budget: int = 1800, stamp: dt.datetime | None = None, client: str | None = None,
               from_audit: Path | None = None) -> tuple[dict, Path]:
    stamp = stamp or dt.datetime.now(dt.timezone.utc)
    client = client or (source if source.is_dir() else source.parent).name
    if not CLIENT_NAME.match(client):
        raise ValueError(f"{client!r}: a client's name is letters, digits, '.', '-' and '_' (64 at most)")
    if from_audit is not None:
        stamp, reused = reusable_audit(source, from_audit)
    folder = out / client / stamp.strftime("%Y-%m-%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=False)
    os.chmod(folder, 0o750)
    if from_audit is None:
        rc = audit(source, folder, check_timeout, workers, host_budget)
    else:  # its results only, the report's one input (secrets masked by conftest; the audit's
        # own log and JUnit file hold its tracebacks, and stay where it wrote them)
        write_text(folder / "results.json", reused)
        rc = 0
    results_path = folder / "results.json"
    if rc not in (0, 1) or not results_path.is_file():
        raise RuntimeError(f"{client}: the audit could not run (pytest exit {rc}); see {folder / 'audit.log'}")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    report = build_report(results, controls, hygiene, {
        "client": client, "generated": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "toolkit_version": toolkit_version(), "inventory_sha256": inventory_hash(source)})
    write_text(folder / "report.json", json.dumps(report, ensure_ascii=False, indent=1))
    page = render_html(report)
    write_text(folder / "rapport.html", page)
    write_pdf(page, folder / "rapport.pdf")
    return report, folder


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="audit inventories and write their reports, then the fleet page")
    run.add_argument("--inventory", action="append", required=True, type=Path,
                     help="an inventory folder (or its hosts.yml); repeat for several clients")
    run.add_argument("--out", type=Path, default=ROOT / "reports")
    run.add_argument("--check-timeout", type=int, default=300, help="seconds per check (default 300)")
    run.add_argument("--host-budget", type=int, default=1800,
                     help="seconds a host's audit may take; past it the host is reported unreachable (default 1800)")
    run.add_argument("--workers", type=int, default=2, help="hosts audited side by side (pytest-xdist)")
    run.add_argument("--client", help="the client's name (default: the inventory's folder name); one --inventory only. "
                                      "AWX gives a job its inventory as a file of its own: playbooks/report.yml names the client")
    run.add_argument("--from-audit", type=Path, metavar="FOLDER",
                     help="no new audit: build the report from the whole one pytest wrote there (--report-json="
                          "FOLDER/results.json) on this same inventory, unchanged since; one --inventory only (make demo)")
    fleet = sub.add_parser("fleet", help="rewrite the fleet page from the reports already there")
    fleet.add_argument("--out", type=Path, default=ROOT / "reports")
    args = parser.parse_args(argv)
    os.umask(0o077)  # the reports describe the practices' machines: the MSP's eyes only
    controls, hygiene = load_yaml(CONTROLS), load_yaml(HYGIENE)
    if args.action == "fleet":
        print(f"==> fleet page: {write_fleet(args.out, controls)}")
        return 0
    if args.client and len(args.inventory) > 1:
        parser.error("--client names one client: give one --inventory with it")
    if args.from_audit and len(args.inventory) > 1:
        parser.error("--from-audit is one inventory's audit: give one --inventory with it")
    status = 0
    for source in args.inventory:
        several = source.is_dir() and not (source / "hosts.yml").is_file() and any(source.glob("*/hosts.yml"))
        if several:
            print(f"ERROR: {source}: the folder of several clients; name each (--inventory {source}/<client>)",
                  file=sys.stderr)
            status = 2
            continue
        if not inventory_file(source).exists():
            print(f"ERROR: {source}: no inventory there (expected a folder with hosts.yml)", file=sys.stderr)
            status = 2
            continue
        print(f"==> reporting on {source} from the audit in {args.from_audit}" if args.from_audit
              else f"==> auditing {source} (read-only)", flush=True)
        try:
            report, folder = report_one(source, args.out, controls, hygiene, args.check_timeout, args.workers,
                                        args.host_budget, client=args.client, from_audit=args.from_audit)
        except Exception as exc:  # noqa: BLE001 - one client's failure must not stop the others
            print(f"ERROR: {source}: the report could not be made: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 2
            continue
        summary = report["summary"]
        print(f"    {report['practice_name']}: {summary['held']} of {summary['applicable']} practices hold, "
              f"{summary['open_incidents']} open incident(s), unreachable: {', '.join(summary['unreachable_hosts']) or 'none'}")
        for key, value in summary["practices"].items():
            print(f"      {key:<18} {STATUSES[value]}")
        print(f"    {folder / 'rapport.html'}\n    {folder / 'rapport.pdf'}")
        if summary["status"] not in ("conforme", "non_applicable") and status == 0:  # (2 stays 2)
            status = 1
    print(f"==> fleet page: {write_fleet(args.out, controls)}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
