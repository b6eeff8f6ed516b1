#!/usr/bin/env python3
"""Apply a playbook to every client practice of an MSP, N clients at a time (make fleet).

    scripts/fleet.py CLIENTS_DIR [--playbook playbooks/site.yml] [--parallel 4]
                     [--out build/fleet] [--reports reports] [--client-timeout 7200] [--no-record]
                     [-- ANSIBLE-PLAYBOOK OPTIONS, e.g. --check --diff, --tags backup]

Every folder of CLIENTS_DIR that holds an inventory file (hosts.yml, hosts.yaml, hosts.ini or
hosts) is one client; its name is the folder's. Ansible is given that file, never the folder
(a folder is read whole, and any executable in it would run on the controller); its group_vars
and host_vars beside it still load. Each client gets its own ansible-playbook process, log and
SSH connection sockets; one client failing, hanging or unreachable never stops the others.

Two clients that share a machine (the MSP's off-site backup server is in every client's
inventory) never run at the same time: both would change it at once. Machines are told apart
by ansible_host (else the inventory name), as `ansible-inventory` reads them; an inventory it
cannot read is an error for that client, which is not run.

The result of a client comes from Ansible's own recap, written as JSON by the cabinet_stats
callback (never parsed from text):

  ok           every host reached, nothing changed, nothing failed
  changed      every host reached, something changed, nothing failed
  unreachable  nothing failed, but a host could not be reached at the start of the run (a
               machine switched off): the others were applied (playbooks/validate.yml leaves it
               out instead of stopping the practice)
  failed       a task failed on a host, the run stopped (bad input: nothing was changed), or a
               host was lost during the run (after its first play: an SSH or firewall change
               may have locked the MSP out)
  timeout      the run outlived --client-timeout and was stopped
  interrupted  the fleet run was stopped (Ctrl-C, SIGTERM) before or while this client ran
  error        no recap: the inventory could not be read, a syntax error, a playbook that
               matched no host

The summary table ends the output; <out>/<stamp>-*/fleet-run.json holds it all. A full run
(no --check or other dry option, no --tags, --skip-tags, --limit or --start-at-task) is each
client's last enforcement: it is merged into <reports>/enforcement.json, which the compliance
report's fleet page (tests/report/build.py fleet) shows beside each practice's report. Exit
status: 0 if every client is ok or changed, 1 if any is not, 2 on a usage error, 130 or 143
when interrupted. Options that prompt (--ask-vault-pass, --ask-pass, --ask-become-pass) are
refused: no client has a terminal; use ANSIBLE_VAULT_PASSWORD_FILE or --vault-password-file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import re
import shutil
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
FULL_PLAYBOOK = "playbooks/site.yml"
_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def clients(folder: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(name, inventory file) of each client folder; the names refused, with the reason."""
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
        found.append((entry.name, inventory))
    return found, refused


# ----------------------------------------------------------------------------- the options
def parse_options(options: list[str]) -> argparse.Namespace:
    """ansible-playbook's own parser reads the options, so that -CD, --che or -vCe mean to
    this runner what they mean to Ansible."""
    from ansible.cli.playbook import PlaybookCLI  # noqa: PLC0415 - Ansible is only needed here

    cli = PlaybookCLI(["ansible-playbook", "site.yml"])
    cli.init_parser()
    try:
        return cli.parser.parse_args([*options, "site.yml"])
    except SystemExit as exc:
        raise ValueError(f"ansible-playbook would refuse these options: {' '.join(options)}") from exc


def masked(options: list[str], parsed: argparse.Namespace) -> list[str]:
    """The options as recorded: every inline extra variable (-e k=v, -vCe k=v, --extra=k=v,
    JSON) is masked wherever it appears; -e @file stays."""
    values = [v for v in parsed.extra_vars if v and not v.startswith("@")]
    shown = []
    for arg in options:
        for value in values:
            arg = arg.replace(value, "<masked>")
        shown.append(arg)
    return shown


def scope(parsed: argparse.Namespace, playbook: str) -> tuple[bool, bool]:
    """(dry, full): a dry run changes nothing; a full one is site.yml on every host, every part."""
    dry = bool(parsed.check or parsed.syntax or parsed.listhosts or parsed.listtasks or parsed.listtags)
    full = (playbook == FULL_PLAYBOOK and not parsed.tags and not parsed.skip_tags and not parsed.subset
            and not parsed.start_at_task)
    return dry, full


def vault_options(parsed: argparse.Namespace) -> list[str]:
    argv = []
    for path in parsed.vault_password_files or []:
        argv += ["--vault-password-file", path]
    for ident in parsed.vault_ids or []:
        argv += ["--vault-id", ident]
    return argv


# ----------------------------------------------------------------------------- the machines
def machines(inventory: Path, env: dict, vault: list[str]) -> set[str]:
    """Each machine of a client's inventory, by the address Ansible connects to."""
    done = subprocess.run(["ansible-inventory", "-i", str(inventory), "--list", *vault], env=env, cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ansible-inventory could not read it: {done.stderr.strip()[-300:]}")
    data = json.loads(done.stdout)
    found = set()
    for host, variables in data.get("_meta", {}).get("hostvars", {}).items():
        address = variables.get("ansible_host", host) if isinstance(variables, dict) else host
        found.add(str(address).strip().lower())
    for group in data.values():
        for host in (group.get("hosts", []) if isinstance(group, dict) else []):
            if host not in data.get("_meta", {}).get("hostvars", {}):
                found.add(str(host).strip().lower())
    return found


# ----------------------------------------------------------------------------- one client
def classify(rc: int | None, stats: dict | None, timed_out: bool, interrupted: bool) -> str:
    if interrupted:
        return "interrupted"
    if timed_out:
        return "timeout"
    if not stats or not stats.get("hosts"):
        return "error"   # no recap, or an inventory in which the playbook matched no host
    hosts = stats["hosts"].values()
    if any(h["failures"] for h in hosts) or rc not in (0, 4):
        return "failed"
    lost = stats.get("unreachable_play", {})
    if any(index > 0 for index in lost.values()):
        return "failed"  # reached at the start, then lost during the run
    if any(h["unreachable"] for h in hosts):
        return "unreachable"
    return "changed" if any(h["changed"] for h in hosts) else "ok"


class Fleet:
    """The clients to run, the machines in use, the processes running."""

    def __init__(self, args, options: list[str], run_dir: Path, env: dict):
        self.args, self.options, self.run_dir, self.env = args, options, run_dir, env
        self.cond = threading.Condition()
        self.busy: set[str] = set()
        self.running: dict[str, subprocess.Popen] = {}
        self.stop = threading.Event()

    def interrupt(self) -> None:
        self.stop.set()
        with self.cond:
            for proc in self.running.values():
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            self.cond.notify_all()

    def take(self, pending: list[dict]) -> dict | None:
        """The first pending client whose machines are all free (marked busy), or None when none
        is left; waits while every pending one shares a machine with a running client."""
        with self.cond:
            while True:
                if self.stop.is_set() or not pending:
                    return None
                for item in pending:
                    if not item["machines"] & self.busy:
                        pending.remove(item)
                        self.busy |= item["machines"]
                        return item
                self.cond.wait()

    def release(self, item: dict) -> None:
        with self.cond:
            self.busy -= item["machines"]
            self.cond.notify_all()

    def run(self, item: dict, total: int) -> dict:
        name, index = item["name"], item["index"]
        log, stats_file = self.run_dir / f"{name}.log", self.run_dir / f"{name}.stats.json"
        # Each client's own SSH sockets: two practices may both have a 192.168.1.10 behind
        # different jump hosts, and a shared ControlMaster would run one's tasks on the other's.
        sockets = tempfile.mkdtemp(prefix="cabinet-cp-")
        env = {**self.env, "CABINET_STATS_FILE": str(stats_file), "ANSIBLE_SSH_CONTROL_PATH_DIR": sockets}
        argv = ["ansible-playbook", "-i", str(item["inventory"]), str(self.args.playbook.resolve()), *self.options]
        say(f"[{index}/{total}] {name}: started")
        start = time.monotonic()
        timed_out, rc = False, None
        try:
            with open(log, "wb") as out:
                with self.cond:
                    if self.stop.is_set():
                        raise InterruptedError
                    # Its own session: a timeout or an interruption stops it and all it started.
                    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
                    self.running[name] = proc
                try:
                    rc = proc.wait(timeout=self.args.client_timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        rc = proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        rc = proc.wait()
                finally:
                    with self.cond:
                        self.running.pop(name, None)
        except InterruptedError:
            pass
        finally:
            close_masters(sockets)
        seconds = round(time.monotonic() - start, 1)
        try:
            stats = json.loads(stats_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stats = None
        result = classify(rc, stats, timed_out, self.stop.is_set() and rc not in (0, 2, 4))
        hosts = (stats or {}).get("hosts", {})
        lost = (stats or {}).get("unreachable_play", {})
        row = {
            "client": name, "inventory": str(item["inventory"]), "result": result, "rc": rc, "seconds": seconds,
            "hosts": len(hosts),
            "hosts_unreachable": sorted(h for h, s in hosts.items() if s["unreachable"] and lost.get(h, 0) == 0),
            "hosts_lost": sorted(h for h, i in lost.items() if i > 0),
            "hosts_failed": sorted(h for h, s in hosts.items() if s["failures"]),
            "changed": sum(s["changed"] for s in hosts.values()),
            "log": str(log), "started": item.get("started"),
        }
        say(f"[{index}/{total}] {name}: {result} in {seconds:.0f} s ({row['changed']} changed{detail(row)})")
        return row


def close_masters(folder: str) -> None:
    """Ends the SSH ControlMaster processes a client's run left (they outlive it otherwise)."""
    try:
        for sock in Path(folder).iterdir():
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "cabinet-fleet"],
                           capture_output=True, timeout=10, check=False)
    except OSError:
        pass
    shutil.rmtree(folder, ignore_errors=True)


def detail(row: dict) -> str:
    text = ""
    if row.get("hosts_unreachable"):
        text += f"; unreachable: {', '.join(row['hosts_unreachable'])}"
    if row.get("hosts_lost"):
        text += f"; lost during the run: {', '.join(row['hosts_lost'])}"
    if row.get("hosts_failed"):
        text += f"; failed: {', '.join(row['hosts_failed'])}"
    if row.get("error"):
        text += f"; {row['error']}"
    return text


def error_row(item: dict, result: str, message: str) -> dict:
    return {"client": item["name"], "inventory": str(item["inventory"]), "result": result, "rc": None, "seconds": 0,
            "hosts": 0, "hosts_unreachable": [], "hosts_lost": [], "hosts_failed": [], "changed": 0, "log": "",
            "error": message}


def table(rows: list[dict]) -> str:
    lines = [f"  {'client':<24} {'result':<12} {'hosts':>5} {'changed':>7} {'seconds':>8}  unreachable / lost / failed hosts"]
    for r in rows:
        names = ", ".join(r["hosts_unreachable"] + [f"{h} (lost)" for h in r["hosts_lost"]]
                          + [f"{h} (failed)" for h in r["hosts_failed"]]) or r.get("error", "")
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


def record_enforcement(reports: Path, run: dict, rows: list[dict]) -> Path:
    """Each client's latest full run, merged into <reports>/enforcement.json (other clients kept),
    under a lock: two fleet runs at once do not lose each other's lines."""
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / "enforcement.json"
    with open(reports / ".enforcement.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(known, dict) or not isinstance(known.get("clients"), dict):
                known = {}
        except (OSError, ValueError):
            known = {}
        merged = dict(known.get("clients", {}))
        for row in rows:
            merged[row["client"]] = {"finished": run["finished"], "playbook": run["playbook"],
                                     **{k: row[k] for k in ("result", "hosts", "hosts_unreachable", "hosts_lost",
                                                            "hosts_failed", "changed", "seconds")}}
        write_json(path, {"schema": 1, "clients": merged})
    return path


def publish(reports: Path, run: dict, rows: list[dict]) -> None:
    """Record the clients' last enforcement, then rebuild the fleet page that shows it."""
    record_enforcement(reports, run, rows)
    page = subprocess.run([sys.executable, str(ROOT / "tests" / "report" / "build.py"), "fleet", "--out", str(reports)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    if page.returncode == 0:
        say(f"==> Fleet page: {reports / 'index.html'} (last enforcement beside each report)")
    else:
        say(f"WARNING: the fleet page could not be updated: {page.stderr.strip()[-300:]}")


def main(argv: list[str]) -> int:
    if "--" in argv:
        cut = argv.index("--")
        argv, options = argv[:cut], argv[cut + 1:]
    else:
        options = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clients_dir", type=Path, help="the folder that holds one inventory folder per client")
    parser.add_argument("--playbook", type=Path, default=ROOT / FULL_PLAYBOOK)
    parser.add_argument("--parallel", type=int, default=4, help="clients run at a time (default 4)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "fleet", help="logs: <out>/<stamp>-*/<client>.log")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports",
                        help="where the compliance reports live: enforcement.json and the fleet page are updated")
    parser.add_argument("--client-timeout", type=float, default=7200, help="seconds before a client's run is stopped")
    parser.add_argument("--no-record", action="store_true",
                        help="leave enforcement.json and the fleet page alone (make bench's runs are not enforcement)")
    args = parser.parse_args(argv)
    if not args.clients_dir.is_dir():
        parser.error(f"{args.clients_dir}: not a folder")
    if not 1 <= args.parallel <= 64:
        parser.error("--parallel: a number of clients from 1 to 64")
    if not args.playbook.is_file():
        parser.error(f"--playbook {args.playbook}: no such file")
    try:
        parsed = parse_options(options)
    except ValueError as exc:
        parser.error(str(exc))
    if parsed.ask_vault_pass or parsed.ask_pass or parsed.become_ask_pass:
        parser.error("options that prompt cannot reach the clients' runs (no terminal): give the vault password with "
                     "ANSIBLE_VAULT_PASSWORD_FILE or -- --vault-password-file FILE; connect with keys")
    found, refused = clients(args.clients_dir)
    for reason in refused:
        say(f"WARNING: skipped {reason}")
    if not found:
        parser.error(f"{args.clients_dir}: no client folder with an inventory ({', '.join(INVENTORY_FILES)})")
    playbook = os.path.relpath(args.playbook.resolve(), ROOT)
    dry, full = scope(parsed, playbook)
    shown = masked(options, parsed)

    os.umask(0o077)   # logs may hold a --diff of a practice's configuration
    started = dt.datetime.now(dt.timezone.utc)
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=started.strftime("%Y-%m-%d-%H%M%S-"), dir=args.out))
    env = dict(os.environ)
    env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join(p for p in (str(CALLBACKS), env.get("ANSIBLE_CALLBACK_PLUGINS", "")) if p)
    enabled = [c for c in env.get("ANSIBLE_CALLBACKS_ENABLED", "").split(",") if c.strip()]
    env["ANSIBLE_CALLBACKS_ENABLED"] = ",".join(enabled + ["cabinet_stats"])
    env.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    env["ANSIBLE_NOCOLOR"] = "1"
    say(f"==> {playbook} on {len(found)} client(s), {args.parallel} at a time"
        f"{' with ' + ' '.join(shown) if shown else ''}; logs in {run_dir}")

    fleet = Fleet(args, options, run_dir, env)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: (fleet.interrupt(), setattr(fleet, "signal", number)))
    items = [{"name": n, "inventory": inv, "index": i} for i, (n, inv) in enumerate(found, 1)]
    rows: dict[str, dict] = {}

    # Which machines each client has, read side by side; a client whose inventory cannot be read
    # is not run.
    vault = vault_options(parsed)
    lock = threading.Lock()

    def read(item: dict) -> None:
        try:
            item["machines"] = machines(item["inventory"], env, vault)
        except Exception as exc:  # noqa: BLE001 - one client's inventory must not stop the others
            with lock:
                rows[item["name"]] = error_row(item, "error", f"inventory: {exc}")
    readers = [threading.Thread(target=read, args=(item,)) for item in items]
    for i in range(0, len(readers), args.parallel):
        for t in readers[i:i + args.parallel]:
            t.start()
        for t in readers[i:i + args.parallel]:
            t.join()
    pending = [item for item in items if item["name"] not in rows]
    shared = {m for m in set().union(*(i["machines"] for i in pending)) if sum(m in i["machines"] for i in pending) > 1} if pending else set()
    if shared:
        say(f"    machines in several clients' inventories, never worked on by two runs at once: {', '.join(sorted(shared))}")

    def worker() -> None:
        while True:
            item = fleet.take(pending)
            if item is None:
                return
            item["started"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            try:
                row = fleet.run(item, len(items))
            except Exception as exc:  # noqa: BLE001 - one client's failure must not stop the others
                row = error_row(item, "error", f"{type(exc).__name__}: {exc}")
                say(f"[{item['index']}/{len(items)}] {item['name']}: error ({row['error']})")
            finally:
                fleet.release(item)
            row["finished"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            with lock:
                rows[item["name"]] = row

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(min(args.parallel, len(pending)) or 1)]
    for t in workers:
        t.start()
    while any(t.is_alive() for t in workers):
        for t in workers:
            t.join(timeout=0.5)
    for item in items:   # never started: the run was interrupted
        rows.setdefault(item["name"], error_row(item, "interrupted", "not started: the fleet run was interrupted"))
    ordered = [rows[item["name"]] for item in items]

    finished = dt.datetime.now(dt.timezone.utc)
    run = {"schema": 1, "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
           "finished": finished.strftime("%Y-%m-%dT%H:%M:%SZ"), "playbook": playbook, "options": shown,
           "dry": dry, "full": full, "interrupted": fleet.stop.is_set(), "parallel": args.parallel, "clients": ordered}
    write_json(run_dir / "fleet-run.json", run)
    bad = [r for r in ordered if r["result"] not in GOOD]
    say("")
    say(f"Fleet summary: {len(ordered) - len(bad)} of {len(ordered)} client(s) ok or changed, "
        f"{(finished - started).total_seconds():.0f} s{' (interrupted)' if fleet.stop.is_set() else ''}")
    say(table(ordered))
    # Only a full, real run is a practice's last enforcement: not a dry run, a part or a subset.
    recorded = [r for r in ordered if r["result"] not in ("interrupted",)]
    if full and not dry and not args.no_record and recorded:
        publish(args.reports, run, recorded)
    elif not args.no_record:
        say("==> Not recorded as the clients' last enforcement (a dry run, a part or a subset of site.yml)")
    if fleet.stop.is_set():
        return 128 + getattr(fleet, "signal", signal.SIGINT)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
