#!/usr/bin/env python3
"""Apply a playbook to every client practice of an MSP, N clients at a time (make fleet).

    scripts/fleet.py CLIENTS_DIR [--playbook playbooks/site.yml] [--parallel 4]
                     [--out build/fleet] [--reports reports] [--client-timeout 7200]
                     [-- ANSIBLE-PLAYBOOK OPTIONS, e.g. --check --diff, --tags backup]

Every folder of CLIENTS_DIR that holds an inventory (hosts.yml, hosts.yaml, hosts.ini or hosts)
is one client; its name is the folder's. Each client gets its own ansible-playbook process and
log; one client failing, hanging or unreachable never stops the others. The result of a client
comes from Ansible's own recap, written as JSON by the cabinet_stats callback (never parsed from
text):

  ok           every host reached, nothing changed, nothing failed
  changed      every host reached, something changed, nothing failed
  unreachable  nothing failed, but at least one host could not be reached: the others were
               applied (playbooks/validate.yml leaves a machine that is switched off out of the
               run instead of stopping the practice)
  failed       a task failed on a host, or the run stopped (bad input: nothing was changed)
  timeout      the run outlived --client-timeout and was stopped
  error        ansible-playbook ended without a recap (a syntax error, a missing inventory), or
               the playbook matched no host of the inventory

The summary table ends the output; <out>/<stamp>/fleet-run.json holds it all, and each client's
line is merged into <reports>/enforcement.json, which the compliance report's fleet page
(tests/report/build.py fleet) shows beside each practice's report. Exit status: 0 if every client
is ok or changed, 1 if any is not, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLBACKS = ROOT / "scripts" / "callback_plugins"
INVENTORY_FILES = ("hosts.yml", "hosts.yaml", "hosts.ini", "hosts")
# A client's name becomes file names and a JSON key: letters, digits, dot, dash, underscore.
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
GOOD = ("ok", "changed")
_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def clients(folder: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(name, inventory path) of each client folder; the names refused, with the reason."""
    found, refused = [], []
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        inventory = next((entry / f for f in INVENTORY_FILES if (entry / f).is_file()), None)
        if inventory is None:
            continue
        if not CLIENT_NAME.match(entry.name):
            refused.append(f"{entry.name!r}: a client folder's name is letters, digits, '.', '-' and '_' (64 at most)")
            continue
        found.append((entry.name, entry))
    return found, refused


def masked(args: list[str]) -> list[str]:
    """The options as recorded: the value of an inline -e/--extra-vars is never written down."""
    shown, hide = [], False
    for arg in args:
        if hide:
            shown.append(arg if arg.startswith("@") else "<masked>")
            hide = False
        elif arg in ("-e", "--extra-vars"):
            shown.append(arg)
            hide = True
        elif arg.startswith("--extra-vars=") or (arg.startswith("-e") and len(arg) > 2):
            value = arg.split("=", 1)[1] if arg.startswith("--") else arg[2:]
            shown.append(arg if value.startswith("@") else arg[: len(arg) - len(value)] + "<masked>")
        else:
            shown.append(arg)
    return shown


def classify(rc: int | None, stats: dict | None, timed_out: bool) -> str:
    if timed_out:
        return "timeout"
    if not stats or not stats.get("hosts"):
        return "error"   # no recap, or an inventory in which the playbook matched no host
    hosts = stats["hosts"].values()
    if any(h["failures"] for h in hosts) or rc not in (0, 4):
        return "failed"
    if any(h["unreachable"] for h in hosts):
        return "unreachable"
    return "changed" if any(h["changed"] for h in hosts) else "ok"


def run_client(name: str, inventory: Path, playbook: Path, options: list[str], run_dir: Path,
               timeout: float, index: int, total: int) -> dict:
    log, stats_file = run_dir / f"{name}.log", run_dir / f"{name}.stats.json"
    env = dict(os.environ)
    env["CABINET_STATS_FILE"] = str(stats_file)
    env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join(p for p in (str(CALLBACKS), env.get("ANSIBLE_CALLBACK_PLUGINS", "")) if p)
    enabled = [c for c in env.get("ANSIBLE_CALLBACKS_ENABLED", "").split(",") if c.strip()]
    env["ANSIBLE_CALLBACKS_ENABLED"] = ",".join(enabled + ["cabinet_stats"])
    env.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    env["ANSIBLE_NOCOLOR"] = "1"
    argv = ["ansible-playbook", "-i", str(inventory), str(playbook), *options]
    say(f"[{index}/{total}] {name}: started")
    start = time.monotonic()
    timed_out = False
    with open(log, "wb") as out:
        # Its own session: a timeout stops ansible-playbook and everything it started.
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    seconds = round(time.monotonic() - start, 1)
    try:
        stats = json.loads(stats_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stats = None
    result = classify(rc, stats, timed_out)
    hosts = (stats or {}).get("hosts", {})
    row = {
        "client": name,
        "inventory": str(inventory),
        "result": result,
        "rc": rc,
        "seconds": seconds,
        "hosts": len(hosts),
        "hosts_unreachable": sorted(h for h, s in hosts.items() if s["unreachable"]),
        "hosts_failed": sorted(h for h, s in hosts.items() if s["failures"]),
        "changed": sum(s["changed"] for s in hosts.values()),
        "log": str(log),
    }
    detail = ""
    if row["hosts_unreachable"]:
        detail += f"; unreachable: {', '.join(row['hosts_unreachable'])}"
    if row["hosts_failed"]:
        detail += f"; failed: {', '.join(row['hosts_failed'])}"
    say(f"[{index}/{total}] {name}: {result} in {seconds:.0f} s ({row['changed']} changed{detail})")
    return row


def table(rows: list[dict]) -> str:
    lines = [f"  {'client':<24} {'result':<12} {'hosts':>5} {'changed':>7} {'seconds':>8}  unreachable / failed hosts"]
    for r in rows:
        names = ", ".join(r["hosts_unreachable"] + [f"{h} (failed)" for h in r["hosts_failed"]])
        lines.append(f"  {r['client']:<24} {r['result']:<12} {r['hosts']:>5} {r['changed']:>7} {r['seconds']:>8.0f}  {names}")
    return "\n".join(lines)


def write_json(path: Path, data) -> None:
    """Atomically, through a new file of a random name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fleet-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def record_enforcement(reports: Path, run: dict) -> Path:
    """Each client's latest run, merged into <reports>/enforcement.json (other clients kept)."""
    path = reports / "enforcement.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(known, dict) or not isinstance(known.get("clients"), dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    merged = dict(known.get("clients", {}))
    for row in run["clients"]:
        merged[row["client"]] = {"finished": run["finished"], "playbook": run["playbook"], "options": run["options"],
                                 **{k: row[k] for k in ("result", "hosts", "hosts_unreachable", "hosts_failed", "changed", "seconds")}}
    write_json(path, {"schema": 1, "clients": merged})
    return path


def main(argv: list[str]) -> int:
    if "--" in argv:
        cut = argv.index("--")
        argv, options = argv[:cut], argv[cut + 1:]
    else:
        options = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clients_dir", type=Path, help="the folder that holds one inventory folder per client")
    parser.add_argument("--playbook", type=Path, default=ROOT / "playbooks" / "site.yml")
    parser.add_argument("--parallel", type=int, default=4, help="clients run at a time (default 4)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "fleet", help="logs: <out>/<stamp>/<client>.log")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports",
                        help="where the compliance reports live: enforcement.json and the fleet page are updated")
    parser.add_argument("--client-timeout", type=float, default=7200, help="seconds before a client's run is stopped")
    args = parser.parse_args(argv)
    if not args.clients_dir.is_dir():
        parser.error(f"{args.clients_dir}: not a folder")
    if not 1 <= args.parallel <= 64:
        parser.error("--parallel: a number of clients from 1 to 64")
    if not args.playbook.is_file():
        parser.error(f"--playbook {args.playbook}: no such file")
    found, refused = clients(args.clients_dir)
    for reason in refused:
        say(f"WARNING: skipped {reason}")
    if not found:
        parser.error(f"{args.clients_dir}: no client folder with an inventory ({', '.join(INVENTORY_FILES)})")

    os.umask(0o077)   # logs may hold a --diff of a practice's configuration
    started = dt.datetime.now(dt.timezone.utc)
    run_dir = args.out / started.strftime("%Y-%m-%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    say(f"==> {args.playbook.name} on {len(found)} client(s), {args.parallel} at a time"
        f"{' with ' + ' '.join(masked(options)) if options else ''}; logs in {run_dir}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(run_client, name, inv, args.playbook.resolve(), options, run_dir,
                               args.client_timeout, i, len(found)) for i, (name, inv) in enumerate(found, 1)]
        rows = [f.result() for f in futures]
    finished = dt.datetime.now(dt.timezone.utc)
    run = {"schema": 1, "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
           "finished": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
           "playbook": os.path.relpath(args.playbook.resolve(), ROOT), "options": masked(options),
           "parallel": args.parallel, "clients": rows}
    write_json(run_dir / "fleet-run.json", run)
    bad = [r for r in rows if r["result"] not in GOOD]
    say("")
    say(f"Fleet summary: {len(rows) - len(bad)} of {len(rows)} client(s) ok or changed, "
        f"{(finished - started).total_seconds():.0f} s")
    say(table(rows))
    # A check-mode run proves nothing was applied: it is not the fleet page's last enforcement.
    if not any(o in ("--check", "-C", "--syntax-check", "--list-tasks", "--list-hosts") for o in options):
        record_enforcement(args.reports, run)
        page = subprocess.run([sys.executable, str(ROOT / "tests" / "report" / "build.py"), "fleet", "--out", str(args.reports)],
                              cwd=ROOT, capture_output=True, text=True, check=False)
        if page.returncode == 0:
            say(f"==> Fleet page: {args.reports / 'index.html'} (last enforcement beside each report)")
        else:
            say(f"WARNING: the fleet page could not be updated: {page.stderr.strip()[-300:]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
