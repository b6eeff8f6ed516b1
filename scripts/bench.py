#!/usr/bin/env python3
"""The controller's cost of a nightly enforcement, measured (make bench).

    scripts/bench.py [--sizes 1,4,8] [--modes ssh,mitogen] [--parallel 4] [--rebuild-seed] [--keep]

What it measures: the idempotent re-run of playbooks/site.yml on N small practices (containers
on this machine), run as an MSP runs its fleet: scripts/fleet.py, one ansible-playbook per
practice, --parallel practices at a time, over SSH as the MSP's admin account (msp-admin, key,
sudo) with Ansible's pipelining and ControlPersist ("ssh"), then the same with mitogen's
strategy over the same SSH ("mitogen"). A small practice is one machine in cabinet_managed: the
five practices every machine gets (alerting, the ANSSI base, passwords, updates, antivirus).

For each run it records:
  - wall time;
  - the controller's CPU seconds: user + system time of the whole process tree of the fleet
    run, every ansible-playbook, fork, ssh master and mitogen process included (this script
    makes itself their subreaper, so even the ssh masters that detach are counted, then ended);
  - the host-tasks executed (ok, changed, failed, unreachable results; skipped ones apart), from
    the cabinet_stats callback;
  - controller CPU per executed host-task, and from it the extrapolation to 50 and 500
    practices (the method is printed with the table and in the README); and controller CPU
    per host-task with the skipped ones counted, which compares across versions of the roles
    (a skipped host-task costs the controller too, and which checks skip changes with the code).

How: one container is set up (openssh-server, sudo, msp-admin) and converged once, then saved
as the image localhost/cabinet-bench:seed (rebuilt when missing or with --rebuild-seed). N
clones of it start on the network cabinet-bench; a first run (not measured) settles what
differs between clones (their names); then each mode runs once per size. The containers share
this machine's CPUs with the controller, so wall times are pessimistic against real,
remote practices; the CPU seconds are the controller's own. A benchmark, not a test: nothing
is asserted on times. Results: build/bench/bench.md and bench.json.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "bench"
SEED = "localhost/cabinet-bench:seed"
NETWORK = "cabinet-bench"
ADMIN = "msp-admin"
PR_SET_CHILD_SUBREAPER = 36
# The assumptions of the extrapolation, printed with it.
MACHINES_PER_PRACTICE = 4          # a server and three workstations
CONTROLLER_CORES = os.cpu_count() or 2


def sh(*argv: str, check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=capture, text=True, **kw)


def log(text: str) -> None:
    print(text, flush=True)


def ansible_env(mode: str, **extra: str) -> dict:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env.pop("ANSIBLE_STRATEGY", None)
    env.pop("ANSIBLE_STRATEGY_PLUGINS", None)
    if mode == "mitogen":
        env["ANSIBLE_STRATEGY_PLUGINS"] = str(ROOT / "scripts" / "strategy_plugins")
        env["ANSIBLE_STRATEGY"] = "cabinet_mitogen_linear"
    env.update(extra)
    return env


def has_mitogen() -> bool:
    return subprocess.run([sys.executable, "-c", "import ansible_mitogen"], capture_output=True, check=False).returncode == 0


# ----------------------------------------------------------------------------- the practices
def practice_vars(index: int, key: Path, known_hosts: Path) -> dict:
    demo = __import__("yaml").safe_load((ROOT / "inventories" / "demo" / "group_vars" / "all" / "main.yml").read_text(encoding="utf-8"))
    keep = {k: v for k, v in demo.items() if k.startswith("alerting_") or k.startswith("lab_mailsink_")}
    keep.update({
        "alerting_practice_name": f"Cabinet de mesure {index}",
        "alerting_relay_tls_ca_cert": "{{ lookup('ansible.builtin.file', '%s') }}" % (ROOT / "molecule" / "resources" / "files" / "mailsink.crt"),
        "ansible_user": ADMIN,
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes",
    })
    return keep


def write_inventory(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


def seed_image_exists() -> bool:
    return sh("podman", "image", "exists", SEED, check=False).returncode == 0


def build_seed() -> None:
    """One machine set up for SSH as msp-admin and converged once, saved as an image."""
    log("==> Building the seed practice (one converge of site.yml, saved as " + SEED + ")")
    lab = OUT / "lab" / "hosts.yml"
    demo = __import__("yaml").safe_load((ROOT / "inventories" / "demo" / "group_vars" / "all" / "main.yml").read_text(encoding="utf-8"))
    write_inventory(lab, {"all": {
        "vars": {"ansible_connection": "podman", "ansible_user": "root", "lab_name": "bench",
                 "lab_mailsink_user": demo["lab_mailsink_user"], "lab_mailsink_password": demo["lab_mailsink_password"]},
        "children": {
            "bench_seed": {"hosts": {"bench-seed": {
                "lab_image": "bookworm", "lab_packages": ["openssh-server", "sudo"], "lab_admin_account": ADMIN,
                "lab_files": [f for f in demo["lab_files"] if "clamav" in f["path"]]}}},
            "lab_mailsink": {"hosts": {"bench-mailsink": {"lab_image": "bookworm", "lab_aliases": ["mailsink"]}}},
        }}})
    env = ansible_env("mitogen" if has_mitogen() else "ssh")
    with open(OUT / "seed-lab.log", "w") as out:
        subprocess.run(["ansible-playbook", "-i", str(lab), str(ROOT / "molecule" / "resources" / "lab-up.yml")],
                       cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    key = OUT / "msp-admin-key"
    key.unlink(missing_ok=True)
    sh("podman", "cp", "bench-seed:/root/lab-admin-key", str(key))
    key.chmod(0o600)
    ip = container_ip("bench-seed")
    known = OUT / "known_hosts"
    scan_keys({"bench-seed": ip}, known)
    inv = OUT / "seed" / "hosts.yml"
    write_inventory(inv, {"all": {"vars": practice_vars(0, key, known), "children": {
        "cabinet_managed": {"hosts": {"bench-seed": {"ansible_host": ip}}}}}})
    with open(OUT / "seed-site.log", "w") as out:
        subprocess.run(["ansible-playbook", "-i", str(inv), str(ROOT / "playbooks" / "site.yml")],
                       cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    sh("podman", "stop", "-t", "30", "bench-seed")
    head = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD", check=False).stdout.strip()
    sh("podman", "commit", "--change", 'CMD ["/sbin/init"]', "--change", f"LABEL cabinet.bench.commit={head}",
       "bench-seed", SEED)
    sh("podman", "rm", "-f", "bench-seed")
    log(f"==> {SEED} saved (commit {head})")


def container_ip(name: str) -> str:
    data = json.loads(sh("podman", "inspect", name).stdout)[0]
    return data["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]


def scan_keys(hosts: dict[str, str], known: Path) -> None:
    """Each container's host key by its address, read from inside it (not trusted from the network)."""
    lines = []
    for name, ip in hosts.items():
        pub = sh("podman", "exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()
        lines.append(f"{ip} {pub[0]} {pub[1]}")
    known.write_text("\n".join(lines) + "\n", encoding="utf-8")


CLONE_IPS: dict[str, str] = {}


def start_clones(count: int) -> None:
    log(f"==> Starting {count} practice(s) from {SEED}")
    for i in range(1, count + 1):
        name = f"bench-{i}"
        sh("podman", "rm", "-f", name, check=False)
        sh("podman", "run", "-d", "--name", name, "--hostname", name, "--network", NETWORK, "--systemd", "always",
           "--tmpfs", "/tmp:rw,exec", "--label", "cabinet.rig=bench", SEED, "/sbin/init")
    for i in range(1, count + 1):
        name = f"bench-{i}"
        # podman exec refuses a container that is still starting: ask again for two minutes.
        deadline, state = time.monotonic() + 120, ""
        while time.monotonic() < deadline:
            done = sh("podman", "exec", name, "systemctl", "is-system-running", "--wait", check=False)
            state = done.stdout.strip() or done.stderr.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(2)
        else:
            raise SystemExit(f"{name} did not boot: {state}")
        CLONE_IPS[name] = container_ip(name)


def write_clients(count: int, key: Path, known: Path) -> dict[int, Path]:
    """One client folder per practice, and one folder per size holding links to the first N."""
    clients = OUT / "clients"
    shutil.rmtree(clients, ignore_errors=True)
    for i in range(1, count + 1):
        name = f"bench-{i}"
        write_inventory(clients / name / "hosts.yml", {"all": {"vars": practice_vars(i, key, known), "children": {
            "cabinet_managed": {"hosts": {name: {"ansible_host": CLONE_IPS[name]}}}}}})
    return clients


def size_folder(clients: Path, size: int) -> Path:
    folder = OUT / "sizes" / str(size)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(1, size + 1):
        (folder / f"bench-{i}").symlink_to(clients / f"bench-{i}")
    return folder


# ----------------------------------------------------------------------------- measuring
def orphans() -> list[int]:
    """Processes this script adopted as their subreaper (detached ssh masters, mitogen's)."""
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me:
            found.append(int(entry))
    return found


def reap_all() -> None:
    for pid in orphans():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.1)


def measure(mode: str, size: int, clients_dir: Path, parallel: int) -> dict:
    reap_all()
    cp = OUT / "cp" / f"{mode}-{size}"
    shutil.rmtree(cp, ignore_errors=True)
    cp.mkdir(parents=True)
    env = ansible_env(mode, ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    logs = OUT / "runs" / f"{mode}-{size}"
    shutil.rmtree(logs, ignore_errors=True)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fleet.py"), str(clients_dir), "--parallel", str(min(parallel, size)),
                           "--out", str(logs), "--no-record"],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    reap_all()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run_dir = next(logs.iterdir())
    run = json.loads((run_dir / "fleet-run.json").read_text(encoding="utf-8"))
    executed = skipped = changed = 0
    plays: list[dict] = []
    for row in run["clients"]:
        stats = json.loads((run_dir / f"{row['client']}.stats.json").read_text(encoding="utf-8"))
        executed += stats["executed"]
        skipped += stats["results"]["skipped"]
        changed += stats["results"]["changed"]
        if not plays:
            plays = stats["plays"]
    results = sorted({r["result"] for r in run["clients"]})
    return {"mode": mode, "practices": size, "parallel": min(parallel, size), "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "executed": executed, "skipped": skipped, "changed": changed,
            "cpu_ms_per_host_task": round(1000 * cpu / executed, 1) if executed else None,
            "cpu_ms_per_any_host_task": round(1000 * cpu / (executed + skipped), 1) if executed + skipped else None,
            "results": results, "exit": done.returncode, "plays_first_client": plays, "log": str(run_dir)}


def extrapolate(row: dict, per_machine: float) -> dict:
    """Minutes of a nightly run of P practices on this controller: the larger of
    - the CPU-bound time: CPU seconds per host-task measured, times the host-tasks of P practices
      of MACHINES_PER_PRACTICE machines each, spread over the controller's cores;
    - the pace measured: wall seconds per practice at this size and parallelism, times P (a
      practice's machines run side by side in its one ansible-playbook, as forks)."""
    out = {}
    for practices in (50, 500):
        cpu_bound = row["cpu_s"] / row["executed"] * practices * MACHINES_PER_PRACTICE * per_machine / CONTROLLER_CORES
        paced = row["wall_s"] / row["practices"] * practices
        out[practices] = round(max(cpu_bound, paced) / 60, 1)
    return out


def table(rows: list[dict], per_machine: float) -> str:
    # A skipped host-task costs the controller a fork and its variables too, and which checks
    # count as skipped changes with the code (a passing validation stop is one since session 18):
    # CPU per host-task, skipped ones counted, compares across versions; per executed one, not.
    lines = ["| mode | practices | parallel | wall s | controller CPU s | host-tasks executed | skipped "
             "| CPU ms / executed host-task | CPU ms / host-task, skipped counted | changed "
             "| 50 practices (min) | 500 practices (min) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        x = extrapolate(r, per_machine)
        lines.append(f"| {r['mode']} | {r['practices']} | {r['parallel']} | {r['wall_s']} | {r['cpu_s']} | {r['executed']} "
                     f"| {r['skipped']} | {r['cpu_ms_per_host_task']} | {r.get('cpu_ms_per_any_host_task')} | {r['changed']} "
                     f"| {x[50]} | {x[500]} |")
    return "\n".join(lines)


def plays_table(plays: list[dict]) -> str:
    lines = ["| play | seconds | task headers | executed | skipped |", "|---|---:|---:|---:|---:|"]
    for p in plays:
        executed = p["ok"] + p["changed"] + p["failed"] + p["unreachable"]
        name = p["name"].replace("|", "\\|")  # a play's name holds " | ", which would end the table's cell
        lines.append(f"| {name} | {p.get('seconds', 0)} | {p['tasks']} | {executed} | {p['skipped']} |")
    return "\n".join(lines)


def clean(count: int) -> None:
    # One at a time, --ignore: a name that is gone must not keep the others (podman rm stops at it).
    for name in [f"bench-{i}" for i in range(1, count + 1)] + ["bench-seed", "bench-mailsink"]:
        sh("podman", "rm", "--ignore", "-f", "-t", "5", name, check=False)
    sh("podman", "network", "rm", NETWORK, check=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4,8", help="numbers of practices, comma-separated (default 1,4,8)")
    parser.add_argument("--modes", default="ssh,mitogen", help="ssh (Ansible's own, pipelining) and/or mitogen")
    parser.add_argument("--parallel", type=int, default=4, help="practices at a time, as make fleet's default")
    parser.add_argument("--rebuild-seed", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the containers running afterwards")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("ssh", "mitogen") for m in modes) or not sizes or min(sizes) < 1 or max(sizes) > 32:
        parser.error("--modes: ssh and/or mitogen; --sizes: 1 to 32")
    if "mitogen" in modes and not has_mitogen():
        parser.error("mitogen is not installed in this Python (requirements.txt installs it)")
    OUT.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    if args.rebuild_seed:
        sh("podman", "rmi", "-f", SEED, check=False)
    if not seed_image_exists():
        build_seed()
    else:
        # The mail sink (the relay the alerts go to) is part of the lab.
        if sh("podman", "container", "exists", "bench-mailsink", check=False).returncode != 0:
            build_seed_lab_only()
    key, known = OUT / "msp-admin-key", OUT / "known_hosts"
    count = max(sizes)
    start_clones(count)
    scan_keys(CLONE_IPS, known)
    clients = write_clients(count, key, known)
    # Only now, with every container up: podman's helpers (conmon, aardvark-dns) detach from
    # the commands that start containers, and must not become this script's to end. From here
    # on, what this script adopts comes from the measured runs (ssh masters, mitogen's processes).
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("cannot become the subreaper of the runs: their CPU time would be undercounted")
    log(f"==> Settling the {count} clone(s) (a first run, not measured)")
    settle = measure("mitogen" if has_mitogen() else "ssh", count, size_folder(clients, count), args.parallel)
    log(f"    settled in {settle['wall_s']} s ({settle['changed']} changed; results {settle['results']})")
    rows = []
    for mode in modes:
        for size in sizes:
            log(f"==> {mode}: idempotent re-run of site.yml on {size} practice(s)")
            row = measure(mode, size, size_folder(clients, size), args.parallel)
            log(f"    {row['wall_s']} s wall, {row['cpu_s']} CPU s, {row['executed']} host-tasks, {row['changed']} changed, "
                f"results {row['results']}")
            rows.append(row)
    largest = [r for r in rows if r["practices"] == max(sizes)]
    per_machine = largest[0]["executed"] / largest[0]["practices"]
    machine = f"{platform.node()}: {CONTROLLER_CORES} CPUs ({platform.processor() or platform.machine()}), " \
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB, {platform.platform()}"
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    ratio = ""
    by = {(r["mode"], r["practices"]): r for r in rows}
    if ("ssh", max(sizes)) in by and ("mitogen", max(sizes)) in by:
        a, b = by[("ssh", max(sizes))], by[("mitogen", max(sizes))]
        ratio = (f"\nController CPU per host-task, ssh / mitogen at {max(sizes)} practices: "
                 f"{a['cpu_ms_per_host_task'] / b['cpu_ms_per_host_task']:.1f}x "
                 f"({a['cpu_ms_per_any_host_task'] / b['cpu_ms_per_any_host_task']:.1f}x with skipped ones counted)\n")
    mitogen_plays = next((r["plays_first_client"] for r in rows if r["mode"] == "mitogen" and r["practices"] == 1), [])
    text = (f"# make bench, {date}\n\nMachine: {machine}\n\n{table(rows, per_machine)}\n{ratio}\n"
            f"Extrapolation: {per_machine:.0f} host-tasks a machine (measured), {MACHINES_PER_PRACTICE} machines a practice, "
            f"{CONTROLLER_CORES} cores; minutes = the larger of the CPU-bound time (CPU s per host-task x host-tasks / cores) "
            f"and the pace measured (wall s per practice at that size x practices).\n")
    if mitogen_plays:
        text += f"\nPer play, one practice, mitogen:\n\n{plays_table(mitogen_plays)}\n"
    (OUT / "bench.md").write_text(text, encoding="utf-8")
    (OUT / "bench.json").write_text(json.dumps({"date": date, "machine": machine, "rows": rows, "settle": settle,
                                                "per_machine": per_machine}, indent=1), encoding="utf-8")
    print()
    print(text)
    if not args.keep:
        clean(count)
    return 0


def build_seed_lab_only() -> None:
    lab = OUT / "lab" / "hosts.yml"
    if not lab.is_file():
        raise SystemExit("the bench's lab inventory is missing: make bench ARGS=--rebuild-seed")
    data = json.loads(lab.read_text(encoding="utf-8"))
    data["all"]["children"].pop("bench_seed", None)
    only = OUT / "lab-mailsink" / "hosts.yml"
    write_inventory(only, data)
    with open(OUT / "mailsink-lab.log", "w") as out:
        subprocess.run(["ansible-playbook", "-i", str(only), str(ROOT / "molecule" / "resources" / "lab-up.yml")],
                       cwd=ROOT, env=ansible_env("mitogen" if has_mitogen() else "ssh"), stdout=out, stderr=subprocess.STDOUT, check=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
