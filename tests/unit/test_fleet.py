"""scripts/fleet.py (make fleet) and its callback, scripts/callback_plugins/cabinet_stats.py.

The runner is tested against a stand-in ansible-playbook first on PATH, which plays each
client's part from the client folder's name (ok, changed, a host down, a failure, a run that
hangs, a crash without a recap), so every result, the parallelism, the time bound and what is
written down are checked in seconds. The callback is tested with the real ansible-playbook. The
live run against real containers is tests/fleet/test_live_fleet.py (Molecule's alerting scenario).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "scripts" / "fleet.py"

FAKE = textwrap.dedent('''\
    #!{python}
    """Stands for ansible-playbook: -i <client folder> <playbook> [options]."""
    import json, os, sys, time
    args = sys.argv[1:]
    inventory = args[args.index("-i") + 1]
    assert os.path.isfile(inventory), "ansible-playbook must be given the inventory file, not its folder"
    client = os.path.basename(os.path.dirname(inventory))
    log = os.environ["FAKE_LOG"]
    with open(log, "a") as out:
        out.write(json.dumps({{"client": client, "event": "start", "t": time.time(), "args": args,
                              "sockets": os.environ.get("ANSIBLE_SSH_CONTROL_PATH_DIR", "")}}) + "\\n")
    kind = client.split("-")[0]
    def host(ok=5, changed=0, failures=0, unreachable=0):
        return {{"ok": ok, "changed": changed, "failures": failures, "unreachable": unreachable,
                 "skipped": 1, "rescued": 0, "ignored": 0}}
    hosts, rc = {{"srv": host(), "poste": host()}}, 0
    if kind == "changed":
        hosts["srv"] = host(changed=3)
    unreachable_play = {{}}
    if kind == "down":
        hosts["poste"], rc = host(ok=0, unreachable=1), 4
        unreachable_play = {{"poste": 0}}
    elif kind == "lost":
        hosts["poste"], rc = host(ok=40, unreachable=1), 4
        unreachable_play = {{"poste": 3}}
    elif kind == "failed":
        hosts["srv"], rc = host(failures=1), 2
    elif kind == "empty":
        hosts = {{}}
    elif kind in ("hang", "slow"):
        time.sleep(60)
    elif kind == "crash":
        print("ERROR! the playbook could not be parsed")
        sys.exit(1)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0.5")))
    print("PLAY RECAP (stand-in)", client)
    stats = {{"schema": 1, "seconds": 1, "hosts": hosts, "plays": [], "task_headers": 0,
              "results": {{}}, "executed": 0, "unreachable_play": unreachable_play}}
    with open(os.environ["CABINET_STATS_FILE"], "w") as out:
        json.dump(stats, out)
    with open(log, "a") as out:
        out.write(json.dumps({{"client": client, "event": "end", "t": time.time()}}) + "\\n")
    sys.exit(rc)
''')


FAKE_INVENTORY = textwrap.dedent('''\
    #!{python}
    """Stands for ansible-inventory -i <client>/hosts.yml --list: two machines a client; clients
    named share-* also have the MSP's off-site server; badinv-* cannot be read."""
    import json, os, sys
    args = sys.argv[1:]
    client = os.path.basename(os.path.dirname(args[args.index("-i") + 1]))
    if client.startswith("badinv"):
        print("ERROR! Attempting to decrypt but no vault secrets found", file=sys.stderr)
        sys.exit(1)
    hostvars = {{"srv": {{"ansible_host": "srv." + client + ".example"}}, "poste-" + client: {{}}}}
    if client.startswith("share"):
        hostvars["backup1"] = {{"ansible_host": "Offsite.MSP.example"}}
    json.dump({{"_meta": {{"hostvars": hostvars}}, "all": {{"children": ["ungrouped"]}}}}, sys.stdout)
''')


@pytest.fixture
def fleet(tmp_path):
    """(run(clients, *args) -> CompletedProcess, paths) with the stand-in first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ansible-playbook"
    fake.write_text(FAKE.format(python=sys.executable), encoding="utf-8")
    fake.chmod(0o755)
    (bin_dir / "ansible-inventory").write_text(FAKE_INVENTORY.format(python=sys.executable), encoding="utf-8")
    (bin_dir / "ansible-inventory").chmod(0o755)
    clients = tmp_path / "clients"
    clients.mkdir()
    paths = {"clients": clients, "out": tmp_path / "out", "reports": tmp_path / "reports", "log": tmp_path / "calls.jsonl"}

    def command(names, *args, **env):
        for name in names:
            (clients / name).mkdir(exist_ok=True)
            (clients / name / "hosts.yml").write_text("all: {}\n", encoding="utf-8")
        environment = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(paths["log"]), **env}
        argv = [sys.executable, str(FLEET), str(clients), "--out", str(paths["out"]), "--reports", str(paths["reports"]), *args]
        return argv, environment

    def run(names, *args, timeout=120, **env):
        argv, environment = command(names, *args, **env)
        return subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=timeout, check=False)
    paths["command"] = command
    return run, paths


def last_run(paths) -> dict:
    run_dir = sorted(paths["out"].iterdir())[-1]
    return json.loads((run_dir / "fleet-run.json").read_text(encoding="utf-8"))


def calls(paths) -> list[dict]:
    return [json.loads(line) for line in paths["log"].read_text(encoding="utf-8").splitlines()]


def overlap(events: list[dict], a: str, b: str) -> bool:
    span = {}
    for e in events:
        span.setdefault(e["client"], {})[e["event"]] = e["t"]
    return span[a]["start"] < span[b]["end"] and span[b]["start"] < span[a]["end"]


def test_every_result_is_told_apart_and_any_bad_one_fails_the_run(fleet):
    run, paths = fleet
    done = run(["ok-a", "changed-b", "down-c", "failed-d", "crash-e", "empty-f", "lost-g", "badinv-h"])
    assert done.returncode == 1, done.stdout + done.stderr
    results = {r["client"]: r["result"] for r in last_run(paths)["clients"]}
    assert results == {"ok-a": "ok", "changed-b": "changed", "down-c": "unreachable", "failed-d": "failed",
                       "crash-e": "error", "empty-f": "error", "lost-g": "failed", "badinv-h": "error"}
    rows = {r["client"]: r for r in last_run(paths)["clients"]}
    # A machine lost during the run (an SSH or firewall change may have locked the MSP out) is a
    # failure, not a machine switched off.
    assert rows["lost-g"]["hosts_lost"] == ["poste"] and rows["lost-g"]["hosts_unreachable"] == []
    # An inventory that cannot be read: the client is not run, and the reason is told.
    assert "no vault secrets" in rows["badinv-h"]["error"]
    assert "badinv-h" not in {c["client"] for c in calls(paths)}
    row = next(r for r in last_run(paths)["clients"] if r["client"] == "down-c")
    assert row["hosts_unreachable"] == ["poste"] and row["hosts"] == 2
    # The summary table ends the output, one line a client, the unreachable host named.
    summary = done.stdout.split("Fleet summary", 1)[1]
    assert "2 of 8 client(s) ok or changed" in summary
    assert any(line.split()[:2] == ["down-c", "unreachable"] and line.rstrip().endswith("poste")
               for line in summary.splitlines()), summary
    # Each client has its own log.
    run_dir = sorted(paths["out"].iterdir())[-1]
    assert "PLAY RECAP (stand-in) failed-d" in (run_dir / "failed-d.log").read_text(encoding="utf-8")
    assert "could not be parsed" in (run_dir / "crash-e.log").read_text(encoding="utf-8")


def test_a_fleet_that_holds_exits_zero(fleet):
    run, paths = fleet
    done = run(["ok-a", "changed-b"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_clients_run_side_by_side_never_more_than_asked(fleet):
    run, paths = fleet
    done = run([f"ok-{i}" for i in range(6)], "--parallel", "2", FAKE_SLEEP="1")
    assert done.returncode == 0, done.stdout + done.stderr
    events = [json.loads(line) for line in paths["log"].read_text(encoding="utf-8").splitlines()]
    running, most = 0, 0
    for event in sorted(events, key=lambda e: (e["t"], e["event"] == "start")):
        running += 1 if event["event"] == "start" else -1
        most = max(most, running)
    assert most == 2, f"at most {most} client(s) ran at once, asked for 2"
    # Each client its own SSH sockets, removed afterwards: never a master shared between two.
    sockets = [e["sockets"] for e in events if e["event"] == "start"]
    assert len(set(sockets)) == 6 and all(sockets) and not any(os.path.exists(d) for d in sockets)


def test_a_client_that_hangs_is_stopped_and_the_others_complete(fleet):
    run, paths = fleet
    done = run(["hang-a", "ok-b"], "--client-timeout", "3", "--parallel", "2")
    assert done.returncode == 1
    results = {r["client"]: r["result"] for r in last_run(paths)["clients"]}
    assert results == {"hang-a": "timeout", "ok-b": "ok"}
    row = next(r for r in last_run(paths)["clients"] if r["client"] == "hang-a")
    assert row["seconds"] < 30, row


@pytest.mark.parametrize("options", [
    ["--check", "--diff", "-e", "alerting_relay_password=Zq8!vT4@rM2#kW7$", "--tags", "backup"],
    ["-vCe", "alerting_relay_password=Zq8!vT4@rM2#kW7$"],
    ["--extra=alerting_relay_password=Zq8!vT4@rM2#kW7$"],
    ["-e", '{"alerting_relay_password": "Zq8!vT4@rM2#kW7$"}'],
], ids=["long", "bundled", "abbreviated", "json"])
def test_options_reach_ansible_playbook_and_secrets_are_not_written_down(fleet, options):
    run, paths = fleet
    done = run(["ok-a"], "--", *options)
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls(paths)[0]["args"][-len(options):] == options
    written = done.stdout + done.stderr + json.dumps(last_run(paths))
    assert "Zq8!vT4@rM2#kW7$" not in written
    assert "<masked>" in " ".join(last_run(paths)["options"])


@pytest.mark.parametrize("args", [
    ("--", "--check"), ("--", "-CD"), ("--", "--che"), ("--", "--syntax-check"),
    ("--", "--tags", "backup"), ("--", "--limit", "srv"), ("--", "--skip-tags", "antivirus"),
    ("--playbook", str(ROOT / "playbooks" / "backup.yml")),
    ("--no-record",),
], ids=["check", "bundled-check-diff", "abbreviated-check", "syntax", "tags", "limit", "skip-tags", "one-practice", "no-record"])
def test_a_dry_partial_or_unrecorded_run_is_not_the_last_enforcement(fleet, args):
    run, paths = fleet
    done = run(["ok-a"], *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (paths["reports"] / "enforcement.json").exists()
    run(["ok-a"])
    assert (paths["reports"] / "enforcement.json").exists()


def test_each_client_s_last_enforcement_is_merged_for_the_fleet_page(fleet):
    run, paths = fleet
    run(["ok-a", "down-b"])
    run(["changed-c"])
    # A run of one client keeps the others' last results.
    record = json.loads((paths["reports"] / "enforcement.json").read_text(encoding="utf-8"))
    assert {k: v["result"] for k, v in record["clients"].items()} == {"ok-a": "ok", "down-b": "unreachable", "changed-c": "changed"}
    assert record["clients"]["down-b"]["hosts_unreachable"] == ["poste"]
    page = (paths["reports"] / "index.html").read_text(encoding="utf-8")
    assert "incomplète : machine injoignable" in page and "injoignable : poste" in page
    assert page.count("pas d'application par make fleet") == 0


def test_client_folders_are_found_and_odd_names_refused(fleet, tmp_path):
    run, paths = fleet
    (paths["clients"] / "notes").mkdir(parents=True)          # no inventory: not a client
    (paths["clients"] / ".git").mkdir()
    (paths["clients"] / ".git" / "hosts.yml").write_text("all: {}\n", encoding="utf-8")
    done = run(["ok-a", "bad name;rm"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r["client"] for r in last_run(paths)["clients"]] == ["ok-a"]
    assert "skipped 'bad name;rm'" in done.stdout


def test_usage_errors_exit_two(fleet, tmp_path):
    run, paths = fleet
    done = run([], "--parallel", "0")
    assert done.returncode == 2
    done = subprocess.run([sys.executable, str(FLEET), str(tmp_path / "nowhere")], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "not a folder" in done.stderr


def test_the_stats_callback_writes_the_recap_and_the_plays(tmp_path):
    """The real ansible-playbook with the callback: per host counters and per play costs."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: First play
          hosts: all
          gather_facts: false
          tasks:
            - name: A task that runs
              ansible.builtin.command: "true"
              changed_when: false
            - name: A task that changes
              ansible.builtin.debug:
                msg: hello
              changed_when: true
            - name: A task that is skipped
              ansible.builtin.debug:
                msg: never
              when: false
        - name: Second play
          hosts: all
          gather_facts: false
          tasks:
            - name: Another task
              ansible.builtin.debug:
                msg: again
    """), encoding="utf-8")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"one": {}, "two": {}},
                                             "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}),
                         encoding="utf-8")
    stats = tmp_path / "stats.json"
    env = {**os.environ, "ANSIBLE_CALLBACK_PLUGINS": str(ROOT / "scripts" / "callback_plugins"),
           "ANSIBLE_CALLBACKS_ENABLED": "cabinet_stats", "CABINET_STATS_FILE": str(stats),
           "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    env.pop("ANSIBLE_STRATEGY", None)
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(stats.read_text(encoding="utf-8"))
    assert data["hosts"]["one"]["changed"] == 1 and data["hosts"]["two"]["ok"] == 3
    assert [p["name"] for p in data["plays"]] == ["First play", "Second play"]
    first, second = data["plays"]
    assert (first["tasks"], first["ok"], first["changed"], first["skipped"]) == (3, 2, 2, 2)
    assert (second["tasks"], second["ok"]) == (1, 2)
    assert data["executed"] == 6 and data["results"]["skipped"] == 2
    assert all(p["seconds"] >= 0 for p in data["plays"])


def test_the_fleet_page_reads_the_enforcement_record_as_data(tmp_path):
    """A record of the wrong shape is left out, never shown raw; names are escaped."""
    sys.path.insert(0, str(ROOT / "tests" / "report"))
    import build  # noqa: PLC0415

    (tmp_path / "enforcement.json").write_text(json.dumps({"schema": 1, "clients": {
        "<script>alert(1)</script>": {"result": "failed", "finished": "2026-12-07T01:00:00Z", "playbook": "playbooks/site.yml",
                                      "hosts_failed": ["<b>srv</b>"], "hosts_unreachable": "not a list", "changed": "many"},
        "odd-result": {"result": "rm -rf /"},
        "not-a-dict": ["x"],
    }}), encoding="utf-8")
    kept = build.enforcement(tmp_path)
    assert list(kept) == ["<script>alert(1)</script>"]
    assert kept["<script>alert(1)</script>"]["hosts_unreachable"] == [] and kept["<script>alert(1)</script>"]["changed"] == 0
    page = build.write_fleet(tmp_path, build.load_yaml(build.CONTROLS))
    text = page.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text
    assert "<b>srv</b>" not in text and "en échec : &lt;b&gt;srv&lt;/b&gt;" in text
    for junk in ("not-a-dict", "odd-result", "rm -rf"):
        assert junk not in text
    (tmp_path / "enforcement.json").write_text("[1, 2", encoding="utf-8")
    assert build.enforcement(tmp_path) == {}


def test_options_that_prompt_are_refused(fleet):
    run, paths = fleet
    for option in ("--ask-vault-pass", "-K", "--ask-pass"):
        done = run(["ok-a"], "--", option)
        assert done.returncode == 2 and "no terminal" in done.stderr, (option, done.stderr)
    assert not paths["log"].exists()


def test_clients_that_share_a_machine_never_run_at_once(fleet):
    """The MSP's off-site server is in every client's inventory: two runs must not change it at
    once. Clients without a machine in common still run side by side."""
    run, paths = fleet
    done = run(["share-a", "share-b", "ok-c"], "--parallel", "3", FAKE_SLEEP="1.5")
    assert done.returncode == 0, done.stdout + done.stderr
    events = calls(paths)
    assert not overlap(events, "share-a", "share-b")
    assert overlap(events, "share-a", "ok-c") or overlap(events, "share-b", "ok-c")
    assert "offsite.msp.example" in done.stdout


def test_an_interrupted_fleet_stops_its_runs_and_says_so(fleet):
    run, paths = fleet
    argv, env = paths["command"](["slow-a", "slow-b", "slow-c"], "--parallel", "1")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (paths["log"].exists() and paths["log"].read_text(encoding="utf-8")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    results = {r["client"]: r["result"] for r in last_run(paths)["clients"]}
    assert results == {"slow-a": "interrupted", "slow-b": "interrupted", "slow-c": "interrupted"}, out
    assert last_run(paths)["interrupted"] is True and "(interrupted)" in out
    # The stand-in of slow-a was stopped, not left running (it would have written its end).
    assert [c["event"] for c in calls(paths)] == ["start"]
    assert not (paths["reports"] / "enforcement.json").exists()
