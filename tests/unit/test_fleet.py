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
import subprocess
import sys
import textwrap
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
    client = os.path.basename(inventory.rstrip("/"))
    log = os.environ["FAKE_LOG"]
    with open(log, "a") as out:
        out.write(json.dumps({{"client": client, "event": "start", "t": time.time(), "args": args}}) + "\\n")
    kind = client.split("-")[0]
    def host(ok=5, changed=0, failures=0, unreachable=0):
        return {{"ok": ok, "changed": changed, "failures": failures, "unreachable": unreachable,
                 "skipped": 1, "rescued": 0, "ignored": 0}}
    hosts, rc = {{"srv": host(), "poste": host()}}, 0
    if kind == "changed":
        hosts["srv"] = host(changed=3)
    elif kind == "down":
        hosts["poste"], rc = host(ok=0, unreachable=1), 4
    elif kind == "failed":
        hosts["srv"], rc = host(failures=1), 2
    elif kind == "empty":
        hosts = {{}}
    elif kind == "hang":
        time.sleep(60)
    elif kind == "crash":
        print("ERROR! the playbook could not be parsed")
        sys.exit(1)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0.5")))
    print("PLAY RECAP (stand-in)", client)
    stats = {{"schema": 1, "seconds": 1, "hosts": hosts, "plays": [], "task_headers": 0,
              "results": {{}}, "executed": 0}}
    with open(os.environ["CABINET_STATS_FILE"], "w") as out:
        json.dump(stats, out)
    with open(log, "a") as out:
        out.write(json.dumps({{"client": client, "event": "end", "t": time.time()}}) + "\\n")
    sys.exit(rc)
''')


@pytest.fixture
def fleet(tmp_path):
    """(run(clients, *args) -> CompletedProcess, paths) with the stand-in first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ansible-playbook"
    fake.write_text(FAKE.format(python=sys.executable), encoding="utf-8")
    fake.chmod(0o755)
    clients = tmp_path / "clients"
    clients.mkdir()
    paths = {"clients": clients, "out": tmp_path / "out", "reports": tmp_path / "reports", "log": tmp_path / "calls.jsonl"}

    def run(names, *args, timeout=120, **env):
        for name in names:
            (clients / name).mkdir(exist_ok=True)
            (clients / name / "hosts.yml").write_text("all: {}\n", encoding="utf-8")
        environment = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(paths["log"]), **env}
        return subprocess.run([sys.executable, str(FLEET), str(clients), "--out", str(paths["out"]),
                               "--reports", str(paths["reports"]), *args],
                              env=environment, capture_output=True, text=True, timeout=timeout, check=False)
    return run, paths


def last_run(paths) -> dict:
    (run_dir,) = list(paths["out"].iterdir())
    return json.loads((run_dir / "fleet-run.json").read_text(encoding="utf-8"))


def test_every_result_is_told_apart_and_any_bad_one_fails_the_run(fleet):
    run, paths = fleet
    done = run(["ok-a", "changed-b", "down-c", "failed-d", "crash-e", "empty-f"])
    assert done.returncode == 1, done.stdout + done.stderr
    results = {r["client"]: r["result"] for r in last_run(paths)["clients"]}
    assert results == {"ok-a": "ok", "changed-b": "changed", "down-c": "unreachable", "failed-d": "failed",
                       "crash-e": "error", "empty-f": "error"}
    row = next(r for r in last_run(paths)["clients"] if r["client"] == "down-c")
    assert row["hosts_unreachable"] == ["poste"] and row["hosts"] == 2
    # The summary table ends the output, one line a client, the unreachable host named.
    summary = done.stdout.split("Fleet summary", 1)[1]
    assert "2 of 6 client(s) ok or changed" in summary
    assert any(line.split()[:2] == ["down-c", "unreachable"] and line.rstrip().endswith("poste")
               for line in summary.splitlines()), summary
    # Each client has its own log.
    (run_dir,) = list(paths["out"].iterdir())
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


def test_a_client_that_hangs_is_stopped_and_the_others_complete(fleet):
    run, paths = fleet
    done = run(["hang-a", "ok-b"], "--client-timeout", "3", "--parallel", "2")
    assert done.returncode == 1
    results = {r["client"]: r["result"] for r in last_run(paths)["clients"]}
    assert results == {"hang-a": "timeout", "ok-b": "ok"}
    row = next(r for r in last_run(paths)["clients"] if r["client"] == "hang-a")
    assert row["seconds"] < 30, row


def test_options_reach_ansible_playbook_and_secrets_are_not_written_down(fleet):
    run, paths = fleet
    secret = "Zq8!vT4@rM2#kW7$"
    done = run(["ok-a"], "--", "--check", "--diff", "-e", f"alerting_relay_password={secret}", "--tags", "backup")
    assert done.returncode == 0, done.stdout + done.stderr
    call = json.loads(paths["log"].read_text(encoding="utf-8").splitlines()[0])
    assert call["args"][-6:] == ["--check", "--diff", "-e", f"alerting_relay_password={secret}", "--tags", "backup"]
    written = done.stdout + done.stderr + json.dumps(last_run(paths))
    assert secret not in written
    assert last_run(paths)["options"] == ["--check", "--diff", "-e", "<masked>", "--tags", "backup"]


def test_check_mode_is_not_recorded_as_the_last_enforcement(fleet):
    run, paths = fleet
    run(["ok-a"], "--", "--check")
    assert not (paths["reports"] / "enforcement.json").exists()


def test_each_client_s_last_enforcement_is_merged_for_the_fleet_page(fleet):
    run, paths = fleet
    run(["ok-a", "down-b"])
    run(["changed-c"])
    # A run of one client keeps the others' last results.
    record = json.loads((paths["reports"] / "enforcement.json").read_text(encoding="utf-8"))
    assert {k: v["result"] for k, v in record["clients"].items()} == {"ok-a": "ok", "down-b": "unreachable", "changed-c": "changed"}
    assert record["clients"]["down-b"]["hosts_unreachable"] == ["poste"]
    page = (paths["reports"] / "index.html").read_text(encoding="utf-8")
    assert "partielle (machine injoignable)" in page and "injoignable : poste" in page
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
