"""The logic that decides in cabinet-backup and cabinet-backup-server, without containers.

Guard comparison by archive ID and transaction history, the one-session prune, retention
arguments, busy versus failed (borg's --log-json message IDs and exit codes), the restore
test's "unchanged since" rule and what a mismatch means, the unmount on SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SBIN = ROOT / "roles/backup/files/usr/local/sbin"
sys.path.insert(0, str(ROOT / "roles/alerting/files/usr/local/lib/cabinet"))


def load(name: str) -> types.ModuleType:
    return load_script(SBIN / name)


server = load("cabinet-backup-server")
client = load("cabinet-backup")


def lock_timeout_line() -> str:
    # What borg 1.2 and 1.4 write with --log-json when the lock wait ends.
    return json.dumps({"type": "log_message", "time": 1.0, "levelname": "ERROR", "name": "borg.archiver",
                       "message": "Failed to create/acquire the lock /srv/borg/x/lock.exclusive (timeout).",
                       "msgid": "LockTimeout"})


def a(name: str, ident: str, start: str = "2026-11-29T01:30:00.000000") -> dict:
    return {"name": name, "id": ident, "start": start}


# ----------------------------------------------------------------------------- guard by ID
def test_same_name_replacement_is_caught_by_id():
    recorded = [a("h-1", "aa"), a("h-2", "bb")]
    now = [a("h-1", "aa"), a("h-2", "cc")]  # delete ::h-2, create ::h-2
    seen = server.compare(recorded, now)
    assert seen == {"missing": [], "replaced": ["h-2"], "added": ["h-2"]}
    problems = server.guard_problems({"archives": recorded}, now, 10, 3)
    assert problems and "replaced under the same name" in problems[0] and "h-2" in problems[0]


def test_recreate_changes_the_id_and_is_caught():
    recorded = [a("h-1", "aa")]
    assert server.compare(recorded, [a("h-1", "a2")])["replaced"] == ["h-1"]


def test_missing_archive_is_caught_and_new_ones_are_fine():
    recorded = [a("h-1", "aa"), a("h-2", "bb")]
    assert server.compare(recorded, [a("h-2", "bb"), a("h-3", "dd")]) == {"missing": ["h-1"], "replaced": [],
                                                                         "added": ["h-3"]}
    state = {"archives": recorded, "transaction": 10, "practice_commits": 3}
    assert server.guard_problems(state, recorded + [a("h-3", "dd")], 14, 4) == []
    assert "no longer listed" in server.guard_problems(state, [a("h-2", "bb")], 14, 4)[0]


def epoch(iso: str) -> float:
    return server.archive_epoch(iso)


def test_an_archive_re_dated_in_the_manifest_is_caught():
    """The practice rewrites the manifest: same names and IDs, other dates, which would steer
    this server's own prune into deleting the real archives."""
    recorded = [a("h-1", "aa", "2026-11-20T01:30:00.000000"), a("h-2", "bb", "2026-11-21T01:30:00.000000")]
    state = {"archives": recorded, "checked_at": epoch("2026-11-21T03:00:00.000000")}
    now = [a("h-1", "aa", "2026-11-20T01:30:00.000000"), a("h-2", "bb", "2099-01-01T00:00:00.000000")]
    problems = server.guard_problems(state, now, 10, 3, clock=epoch("2026-11-21T04:00:00.000000"))
    assert problems and "changed their date" in problems[0] and "h-2" in problems[0]


@pytest.mark.parametrize(("start", "what"), [("2099-01-01T00:00:00.000000", "in the future"),
                                             ("2026-11-01T00:00:00.000000", "before the last check")])
def test_a_new_archive_with_an_implausible_date_is_caught(start, what):
    state = {"archives": [a("h-1", "aa", "2026-11-20T01:30:00.000000")],
             "checked_at": epoch("2026-11-21T03:00:00.000000")}
    now = state["archives"] + [a("h-9", "ff", start)]
    problems = server.guard_problems(state, now, 10, 3, clock=epoch("2026-11-21T04:00:00.000000"))
    assert problems and what in problems[0]


def test_a_new_archive_dated_now_within_clock_skew_is_fine():
    state = {"archives": [a("h-1", "aa", "2026-11-20T01:30:00.000000")],
             "checked_at": epoch("2026-11-21T03:00:00.000000")}
    for start in ("2026-11-21T02:30:00.000000", "2026-11-21T04:30:00.000000"):  # a clock 30 min off
        now = state["archives"] + [a("h-2", "cc", start)]
        assert server.guard_problems(state, now, 10, 3, clock=epoch("2026-11-21T04:00:00.000000")) == []


def test_a_rewritten_repository_config_is_caught():
    """borg serve lets the practice save a new key even in append-only mode."""
    state = {"archives": [a("h-1", "aa")], "config_sha256": "1" * 64}
    assert server.guard_problems(state, [a("h-1", "aa")], 10, 3, "1" * 64) == []
    problems = server.guard_problems(state, [a("h-1", "aa")], 10, 3, "2" * 64)
    assert problems and "config" in problems[0] and "key" in problems[0]


def test_freshness_counts_from_when_the_server_first_saw_an_archive(repo_client, tmp_path):
    """Not from the manifest's dates: a future-dated archive must not hide a stale practice."""
    c = repo_client
    c.repo.mkdir(parents=True)
    (c.repo / "config").write_text("[repository]\nid = 00\n")
    c.transaction = lambda: 10
    c.commits = lambda: 3
    c.record([a("pc-1", "aa", "2099-01-01T00:00:00.000000")])
    seen = c.state["first_seen_newest"]
    assert abs(seen - time.time()) < 60
    c.state["first_seen_newest"] = time.time() - 40 * 3600
    c.record([a("pc-1", "aa", "2099-01-01T00:00:00.000000")])  # nothing new: the time stays
    assert time.time() - c.state["first_seen_newest"] > 39 * 3600
    assert c.config_copy.read_text() == (c.repo / "config").read_text()
    assert oct(c.config_copy.stat().st_mode & 0o777) == "0o600"


def test_transaction_history_going_back_is_unexplained():
    state = {"archives": [a("h-1", "aa")], "transaction": 20, "practice_commits": 5}
    assert "went back from 20 to 12" in server.guard_problems(state, [a("h-1", "aa")], 12, 5)[0]
    assert "log shrank" in server.guard_problems(state, [a("h-1", "aa")], 20, 2)[0]


def test_state_with_names_only_compares_by_name_once():
    legacy = {"archives": ["h-1", "h-2"]}
    assert server.recorded_archives(legacy) == [{"name": "h-1", "id": None, "start": None},
                                                {"name": "h-2", "id": None, "start": None}]
    assert server.compare(server.recorded_archives(legacy), [a("h-1", "aa")])["missing"] == ["h-2"]


def test_session_problems_only_our_prune_may_change_the_repository():
    before = [a("h-1", "aa"), a("h-2", "bb"), a("h-3", "cc")]
    pruned = [a("h-2", "bb"), a("h-3", "cc")]
    assert server.session_problems(before, pruned, 7, 7, 100, 104, "prune") == []
    # The practice committed during the session (it should not even be able to connect).
    assert "practice committed 1" in server.session_problems(before, pruned, 7, 8, 100, 104, "prune")[0]
    # An archive that was not there before: someone else wrote.
    assert "appeared" in server.session_problems(before, pruned + [a("h-3", "zz")], 7, 7, 100, 104, "prune")[0]
    assert "went back" in server.session_problems(before, pruned, 7, 7, 100, 90, "prune")[0]


def test_prune_arguments_leave_out_levels_set_to_zero():
    settings = {"archive_prefix": "pc-", "retention": {"within_days": 0, "daily": 7, "weekly": 4, "monthly": 12,
                                                      "yearly": 0}}
    assert server.prune_arguments(settings) == ["prune", "--list", "--glob-archives", "pc-*", "--keep-daily", "7",
                                                "--keep-weekly", "4", "--keep-monthly", "12"]
    settings["retention"].update(within_days=2, yearly=2)
    args = server.prune_arguments(settings)
    assert args[4:6] == ["--keep-within", "2d"] and args[-2:] == ["--keep-yearly", "2"]


def test_local_prune_uses_the_same_retention(monkeypatch):
    calls = []
    repo = types.SimpleNamespace(run=lambda *args, **_: calls.append(args) or subprocess.CompletedProcess(args, 0, "", ""))
    conf = {"host": "pc", "run_timeout": 60,
            "retention": {"within_days": 2, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 2}}
    client.prune_local(conf, repo)
    assert calls[0][:4] == ("prune", "--lock-wait", "600", "--glob-archives") and calls[0][4] == "pc-*"
    assert "--keep-within" in calls[0] and calls[1][0] == "compact"


# ----------------------------------------------------------------------------- objects behind the IDs
def key(n: int) -> bytes:
    return n.to_bytes(32, "big")


def entry(tag: int, k: bytes | None = None, data: bytes = b"") -> bytes:
    """One borg 1.x segment entry (crc32, size, tag[, key], data); the CRC is not checked here."""
    body = bytes([tag]) + (k or b"") + data
    return b"\0\0\0\0" + (4 + len(body) + 4).to_bytes(4, "little") + body


def put(n: int, data: bytes = b"chunk") -> bytes:
    return entry(server.TAG_PUT, key(n), data)


def delete(n: int) -> bytes:
    return entry(server.TAG_DELETE, key(n))


COMMIT = entry(server.TAG_COMMIT)
MANIFEST = 0


def write_segments(repo: Path, segments: dict[int, bytes]) -> None:
    """Segments as borg lays them out: data/<n // 1000>/<n>; index.<n> for each committed one."""
    for number, body in segments.items():
        folder = repo / "data" / str(number // 1000)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(number)).write_bytes(server.SEGMENT_MAGIC + body)
        if body.endswith(COMMIT):
            (repo / f"index.{number}").write_bytes(b"")


def backup_night(first: int) -> bytes:
    """What a practice's borg create writes: new chunks, a checkpoint archive added then
    dropped, and the manifest rewritten (a DELETE then a PUT of its all-zero key)."""
    return (put(first) + put(first + 1) + put(first + 2) + delete(MANIFEST) + put(MANIFEST, b"manifest")
            + delete(first + 2) + COMMIT)


def test_a_practice_s_backups_remove_no_object_that_existed(tmp_path):
    """Also a DELETE then PUT of the manifest, and a checkpoint added and dropped in one run."""
    write_segments(tmp_path, {5: put(1) + put(2) + COMMIT, 6: backup_night(10), 7: backup_night(20)})
    assert server.objects_removed_since(tmp_path, 5, 7) == set()
    # A checkpoint committed in one transaction and dropped in the next is still new.
    write_segments(tmp_path, {8: put(30) + COMMIT, 9: delete(30) + COMMIT})
    assert server.objects_removed_since(tmp_path, 7, 9) == set()


@pytest.mark.parametrize("later, what", [
    (delete(2) + COMMIT, "borg debug delete-obj of a chunk the archives use"),
    (delete(2) + put(2, b"forged") + COMMIT, "a chunk overwritten (borg deletes, then puts)"),
    (put(40) + COMMIT + delete(1), "removed in a later, still uncommitted entry: ignored"),
])
def test_objects_deleted_or_overwritten_behind_unchanged_ids_are_found(tmp_path, later, what):
    write_segments(tmp_path, {5: put(1) + put(2) + COMMIT, 6: backup_night(10), 7: later})
    found = server.objects_removed_since(tmp_path, 5, 7)
    assert found == (set() if "uncommitted" in what else {key(2)}), what


def test_segments_before_the_last_check_and_after_the_last_commit_are_not_read(tmp_path):
    write_segments(tmp_path, {5: put(1) + COMMIT, 6: delete(1) + COMMIT, 9: delete(3) + COMMIT})
    assert server.objects_removed_since(tmp_path, 6, 8) == set()
    assert server.objects_removed_since(tmp_path, 5, 8) == {key(1)}


@pytest.mark.parametrize("damage", [b"NOT_BORG", server.SEGMENT_MAGIC + put(1)[:20],
                                    server.SEGMENT_MAGIC + entry(7, key(1)),
                                    server.SEGMENT_MAGIC + put(1)[:4] + (10 ** 9).to_bytes(4, "little") + put(1)[8:]])
def test_an_unreadable_segment_is_an_error_not_a_clean_result(tmp_path, damage):
    (tmp_path / "data" / "0").mkdir(parents=True)
    (tmp_path / "data" / "0" / "6").write_bytes(damage)
    with pytest.raises(server.SegmentUnreadable):
        server.objects_removed_since(tmp_path, 5, 6)


def test_a_segment_that_is_a_symlink_is_not_followed(tmp_path):
    (tmp_path / "data" / "0").mkdir(parents=True)
    (tmp_path / "elsewhere").write_bytes(server.SEGMENT_MAGIC + COMMIT)
    (tmp_path / "data" / "0" / "6").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        server.objects_removed_since(tmp_path, 5, 6)


def test_the_guard_alerts_on_removed_objects_and_keeps_them_from_compaction(repo_client):
    c = repo_client
    write_segments(c.repo, {5: put(1) + put(2) + COMMIT, 6: backup_night(10), 7: delete(1) + COMMIT})
    (c.repo / "config").write_text("[repository]\nid = 00\n")
    c.state.update(archives=[{"name": "pc-1", "id": "aa"}], transaction=5, practice_commits=5)
    c.commits = lambda: 7
    steps = []
    fake_repository(c, [[a("pc-1", "aa")]], {"": 7}, steps)
    c.transaction = lambda: 7
    assert server.prune_one(c) == "tampered"
    assert steps == [], "pruned or compacted with a chunk deleted behind the archive IDs"
    assert c.alerts[0][0] == "critical" and "deleted or overwritten" in c.alerts[0][2]
    assert key(1).hex()[:16] in c.alerts[0][2] and c.state["transaction"] == 5
    # A damaged segment is not taken as "nothing removed" either.
    c.state.pop("tampered")
    (c.repo / "data" / "0" / "7").write_bytes(b"garbage")
    fake_repository(c, [[a("pc-1", "aa")]], {"": 7}, steps)
    c.transaction = lambda: 7
    assert server.prune_one(c) == "tampered" and "could not be read" in c.alerts[-1][2]


# ----------------------------------------------------------------------------- busy versus failed
def test_lock_timeout_is_busy_by_message_id_not_text():
    assert server.classify_failure(2, lock_timeout_line()) == "busy"
    assert server.classify_failure(73, "") == "busy"  # borg 1.4, BORG_EXIT_CODES=modern
    # The same English words without borg's message ID are not trusted.
    assert server.classify_failure(2, "Failed to create/acquire the lock (timeout).") == "failed"
    other = json.dumps({"type": "log_message", "levelname": "ERROR", "message": "x", "msgid": "Repository.CheckNeeded"})
    assert server.classify_failure(2, other) == "failed"
    assert server.classify_failure(0, "") == "ok"


def test_busy_alerts_only_when_it_lasts():
    now = 1_000_000.0
    assert server.busy_verdict(None, now, 24) == (now, False)
    assert server.busy_verdict(now - 3600, now, 24) == (now - 3600, False)
    assert server.busy_verdict(now - 25 * 3600, now, 24) == (now - 25 * 3600, True)
    assert server.busy_verdict(now + 999, now, 24) == (now, False)  # a clock set back restarts the count


def test_client_open_failures_by_message_id():
    missing = json.dumps({"type": "log_message", "levelname": "ERROR", "message": "Repository x does not exist.",
                          "msgid": "Repository.DoesNotExist"})
    closed = json.dumps({"type": "log_message", "levelname": "ERROR", "message": "Connection closed by remote host",
                         "msgid": "ConnectionClosed"})
    assert client.classify_open_failure(2, lock_timeout_line(), "ssh") == "busy"
    assert client.classify_open_failure(2, missing, "local") == "missing"
    assert client.classify_open_failure(2, closed, "ssh") == "unreachable"
    assert client.classify_open_failure(2, closed, "local") == "failed"
    assert client.classify_open_failure(2, "Permission denied", "ssh") == "failed"
    assert "does not exist. [Repository.DoesNotExist]" in client.readable_errors(missing + "\nplain line")


# ----------------------------------------------------------------------------- the one-session prune
@pytest.fixture()
def repo_client(tmp_path, monkeypatch):
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "pc.json").write_text(json.dumps({
        "name": "pc", "host": "pc", "archive_prefix": "pc-", "max_age_hours": 36,
        "retention": {"within_days": 2, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 2}}))
    conf = dict(server.DEFAULTS, root=str(tmp_path / "repos"), state_dir=str(tmp_path / "state"),
                clients_dir=str(tmp_path / "clients"), alert_command="/bin/false", user="borg")
    alerts = []
    incidents = []  # each alert's incident kind (None: not a new incident)
    monkeypatch.setattr(server.cc, "alert", lambda practice, severity, title, details, **kw: (
        alerts.append((severity, title, details)), incidents.append((kw.get("incident"), kw.get("incident_about")))))
    c = server.Client(conf, tmp_path / "clients" / "pc.json")
    c.alerts = alerts
    c.incidents = incidents
    return c


def fake_repository(c, listings: list[list[dict]], commits_after: dict[str, int], steps: list[str]):
    """Each archives() call returns the next listing; commits() the practice's count once the
    named borg step ran ("" before any)."""
    listings = iter(listings)
    state = {"t": 100, "step": ""}
    c.archives = lambda: next(listings)
    c.commits = lambda: commits_after.get(state["step"], commits_after[""])
    c.transaction = lambda: state["t"]

    def borg(*args):
        steps.append(args[0])
        state["t"] += 4
        state["step"] = args[0]
        return subprocess.CompletedProcess(args, 0, "", "")
    c.borg = borg


def test_prune_session_compacts_when_only_its_prune_changed_things(repo_client):
    c = repo_client
    c.state.update(archives=[{"name": "pc-1", "id": "aa"}, {"name": "pc-2", "id": "bb"}], transaction=90,
                   practice_commits=5)
    steps = []
    before = [a("pc-1", "aa"), a("pc-2", "bb")]
    fake_repository(c, [before, [before[1]], [before[1]]], {"": 5}, steps)
    assert server.prune_one(c) == "pruned"
    assert steps == ["prune", "compact"] and not c.alerts
    assert c.state["archives"] == [{"name": "pc-2", "id": "bb", "start": "2026-11-29T01:30:00.000000"}]


def test_same_name_replacement_stops_before_prune_and_compact(repo_client):
    c = repo_client
    c.state.update(archives=[{"name": "pc-1", "id": "aa"}], transaction=90, practice_commits=5)
    steps = []
    fake_repository(c, [[a("pc-1", "forged")]], {"": 7}, steps)
    assert server.prune_one(c) == "tampered"
    assert steps == [] and c.alerts[0][0] == "critical" and "same name" in c.alerts[0][2]
    assert c.state["tampered"] and c.state["archives"] == [{"name": "pc-1", "id": "aa"}]


def _compact_exit_2(args):
    return subprocess.CompletedProcess(args, 2, "", "lock taken")


def _compact_timeout(args):
    raise subprocess.TimeoutExpired(["borg", "compact"], 86400)


@pytest.mark.parametrize("failing_compact", [_compact_exit_2, _compact_timeout], ids=["exit-2", "timeout"])
def test_a_failed_or_stopped_compaction_is_recorded_as_the_server_s_own(repo_client, failing_compact):
    """The server's prune, and whatever segments a compaction stopped part-way committed (copies
    of live objects and of delete markers), must neither look like the practice's deletions at
    the next check nor lie above the state a rollback returns to: they may hold the only copies
    of relocated objects."""
    c = repo_client
    c.state.update(archives=[{"name": "pc-1", "id": "aa"}, {"name": "pc-2", "id": "bb"}], transaction=90,
                   practice_commits=5)
    before = [a("pc-1", "aa"), a("pc-2", "bb")]
    fake_repository(c, [before, [before[1]], [before[1]]], {"": 5}, [])
    prune_only = c.borg

    def borg(*args):
        done = prune_only(*args)  # the transaction moves on, as a compaction's commits do
        return failing_compact(args) if args[0] == "compact" else done
    c.borg = borg
    with pytest.raises(server.BorgFailed):
        server.prune_one(c)
    assert [x["id"] for x in c.state["archives"]] == ["bb"], "the server's own prune was not recorded"
    assert c.state["transaction"] == c.transaction(), "the compaction's own segments are above the recorded state"
    assert server.guard_problems(c.state, [before[1]], c.transaction(), 5) == []


def test_a_practice_commit_between_prune_and_compact_stops_compaction(repo_client):
    c = repo_client
    c.state.update(archives=[{"name": "pc-1", "id": "aa"}], transaction=90, practice_commits=5)
    steps = []
    before = [a("pc-1", "aa"), a("pc-2", "bb")]
    # After the prune, pc-2 is gone and the practice's transaction log grew: not explained by our prune.
    fake_repository(c, [before, [before[0]]], {"": 5, "prune": 6}, steps)
    assert server.prune_one(c) == "unexplained"
    assert steps == ["prune"], "compacted although something unexplained happened"
    assert c.alerts and c.alerts[0][0] == "critical" and c.state["tampered"]
    assert c.incidents == [("offsite_tampered", c.name)], "the tampering is recorded as an incident, about this repository"


def test_a_tampered_repository_stays_stopped_until_rollback_or_accept(repo_client):
    c = repo_client
    c.state.update(archives=[{"name": "pc-1", "id": "aa"}], tampered={"problems": ["x"]}, transaction=90)
    steps = []
    fake_repository(c, [[a("pc-1", "aa")]], {"": 5}, steps)
    assert server.prune_one(c) == "tampered" and steps == []


def test_busy_repository_is_not_unreadable(repo_client, monkeypatch):
    c = repo_client
    done = subprocess.CompletedProcess([], 2, "", lock_timeout_line() + "\n")
    monkeypatch.setattr(server.subprocess, "run", lambda *_, **__: done)
    with pytest.raises(server.Busy):
        c.borg("list", "--json")
    assert c.busy("locked") == 0 and not c.alerts
    c.state["busy_since"] = time.time() - 30 * 3600
    assert c.busy("locked") == 1 and c.alerts[-1][0] == "critical" and "stays locked" in c.alerts[-1][1]


# ----------------------------------------------------------------------------- restore test rule
def item_for(path: Path, **override) -> dict:
    st = path.stat()
    iso = lambda ns: time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ns // 10**9)) + f".{ns // 1000 % 10**6:06d}"  # noqa: E731
    item = {"type": "-", "path": str(path).lstrip("/"), "size": st.st_size, "mtime": iso(st.st_mtime_ns),
            "ctime": iso(st.st_ctime_ns)}
    item.update(override)
    return item


def test_unchanged_since_means_regular_file_same_size_and_mtime(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("Consultation du 3 mars\n")
    item = item_for(f)
    assert client.unchanged(client.lstat(str(f)), item)
    assert not client.unchanged(client.lstat(str(f)), dict(item, size=1))
    link = tmp_path / "link"
    link.symlink_to(f)
    assert not client.unchanged(client.lstat(str(link)), item)
    assert not client.unchanged(None, item)


def test_borg_rounds_microseconds_and_the_rule_still_matches(tmp_path):
    """borg prints times rounded to the microsecond: a file at ...668_700 ns is ...669 us there.
    Truncating the file's ns (as before) dropped such files from the restore test's sample."""
    f = tmp_path / "scan.dcm"
    f.write_bytes(b"x" * 10)
    base = 1_795_975_822 * 10**9
    os.utime(f, ns=(base + 870_668_700, base + 870_668_700))
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(1_795_975_822))
    item = {"type": "-", "path": str(f).lstrip("/"), "size": 10, "mtime": when + ".870669"}
    assert client.borg_time_us(item["mtime"]) == base // 1000 + 870_669
    assert client.unchanged(client.lstat(str(f)), item)
    assert not client.unchanged(client.lstat(str(f)), dict(item, mtime=when + ".870671"))


def test_content_changed_with_mtime_kept_is_a_mismatch_naming_tampering(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("Consultation du 3 mars\n")
    item = item_for(f)
    st = f.stat()
    time.sleep(0.02)
    f.write_text("Consultation du 4 mars\n")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back; ctime moves
    now = client.lstat(str(f))
    assert client.unchanged(now, item), "the size+mtime rule takes this file as unchanged"
    verdict = client.judge_mismatch(str(f), item, now, now)
    assert verdict and "mtime" in verdict and "tampering" in verdict


def test_mismatch_on_an_untouched_file_is_corruption(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x" * 10)
    item = item_for(f)
    now = client.lstat(str(f))
    assert "corruption" in client.judge_mismatch(str(f), item, now, now)


def test_a_file_written_during_the_test_is_not_a_mismatch(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x" * 10)
    item = item_for(f)
    before = client.lstat(str(f))
    f.write_text("y" * 11)
    assert client.judge_mismatch(str(f), item, before, client.lstat(str(f))) is None


# ----------------------------------------------------------------------------- stop = unmount
def test_sigterm_leaves_through_the_unmount(monkeypatch):
    unmounted = []
    monkeypatch.setattr(client, "unmount", lambda conf, spec, why="": unmounted.append(spec["mountpoint"]) or True)

    def mount(self):
        self.mounted_here = True
    monkeypatch.setattr(client.Repository, "_mount", mount)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        spec = {"name": "local", "kind": "local", "mountpoint": "/mnt/x", "device": "LABEL=X", "path": "/mnt/x/r"}
        with pytest.raises(client.Stopped) as stopped:
            with client.Repository({"host": "pc"}, spec):
                client.on_signal(signal.SIGTERM, None)
        assert stopped.value.code == 128 + signal.SIGTERM
        assert unmounted == ["/mnt/x"]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, "a second SIGTERM could cut the unmount"
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_child_is_asked_to_stop_when_the_command_is_stopped(tmp_path):
    marker = tmp_path / "stopped"
    script = f"import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\ntime.sleep(30)\n"

    def stop_soon(*_):
        raise client.Stopped(143)
    saved = signal.signal(signal.SIGALRM, stop_soon)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(client.Stopped):
            client.run_child([sys.executable, "-c", script], timeout=20)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved)
    assert marker.exists(), "the child got no SIGTERM"


def test_disk_found_mounted_at_start_alerts_and_is_unmounted_after(monkeypatch):
    alerts, unmounted = [], []
    monkeypatch.setattr(client, "alert", lambda conf, severity, title, details: alerts.append((severity, title)))
    monkeypatch.setattr(client, "unmount", lambda conf, spec, why="": unmounted.append(spec["mountpoint"]) or True)
    monkeypatch.setattr(client, "mounted_source", lambda mountpoint: "/dev/loop7")
    monkeypatch.setattr(client.subprocess, "run",
                        lambda cmd, **_: subprocess.CompletedProcess(cmd, 0, "/dev/loop7\n", ""))
    monkeypatch.setattr(client.os.path, "realpath", lambda p: p)
    monkeypatch.setattr(client.Path, "mkdir", lambda *_, **__: None)
    spec = {"name": "local", "kind": "local", "mountpoint": "/mnt/x", "device": "LABEL=X", "path": "/mnt/x/r"}
    with client.Repository({"host": "pc"}, spec):
        pass
    assert alerts and "found mounted" in alerts[0][1] and unmounted == ["/mnt/x"]


@pytest.mark.parametrize("where", ["found-mounted-alert", "right-after-mount"])
def test_a_signal_while_mounting_still_unmounts(monkeypatch, where):
    """SIGHUP (an interactive `cabinet-backup borg` whose SSH session drops) or SIGTERM while
    the found-mounted alert is sent, or right after mount(8) returned: __exit__ never runs, so
    the disk must be unmounted on the way out of __enter__."""
    unmounted = []
    state = {"mounted": "/dev/loop7" if where == "found-mounted-alert" else None}

    def fake_run(cmd, **_):
        if cmd[0] == "mount":
            state["mounted"] = "/dev/loop7"
            if where == "right-after-mount":
                raise client.Stopped(128 + signal.SIGTERM)  # the signal lands as mount returns
        return subprocess.CompletedProcess(cmd, 0, "/dev/loop7\n", "")

    def alert(*_):
        raise client.Stopped(128 + signal.SIGHUP)

    monkeypatch.setattr(client, "alert", alert)
    monkeypatch.setattr(client, "unmount", lambda conf, spec, why="": unmounted.append(why) or True)
    monkeypatch.setattr(client, "mounted_source", lambda mountpoint: state["mounted"])
    monkeypatch.setattr(client.subprocess, "run", fake_run)
    monkeypatch.setattr(client.os.path, "realpath", lambda p: p)
    monkeypatch.setattr(client.Path, "mkdir", lambda *_, **__: None)
    spec = {"name": "local", "kind": "local", "mountpoint": "/mnt/x", "device": "LABEL=X", "path": "/mnt/x/r"}
    with pytest.raises(client.Stopped):
        with client.Repository({"host": "pc"}, spec):
            pytest.fail("the body must not run")
    assert unmounted == ["stopped while mounting"]


# ----------------------------------------------------------------------------- authorize
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0m0nQ2o6m3m3qYkq7bq1CwB7p2V0Jv9yJt2Yf0Yx1Q"
CONF = {"root": "/srv/cabinet-backup/", "state_dir": "/var/lib/cabinet-backup-server"}


def test_the_key_line_is_the_one_the_role_wrote_before():
    """Same bytes as the former lineinfile line: a server upgraded in place reads unchanged."""
    assert server.key_line(CONF, "cab-a", "1T", KEY + " root@cab-a\n") == (
        'command="flock -s -w 7200 /var/lib/cabinet-backup-server/locks/cab-a.lock borg serve --append-only '
        '--restrict-to-repository /srv/cabinet-backup/cab-a --storage-quota 1T",restrict '
        f"{KEY} cabinet-backup@cab-a")


@pytest.mark.parametrize(("name", "quota", "key"), [
    ("cab a", "1T", KEY), ("-cab", "1T", KEY), ("../x", "1T", KEY), ("cab\n", "1T", KEY),
    ("cab", "1", KEY), ("cab", "0G", KEY), ("cab", "1T --x", KEY),
    ("cab", "1T", 'command="sh" ' + KEY), ("cab", "1T", "ssh-ed25519 AAAA\nssh-rsa BBBB"), ("cab", "1T", ""),
], ids=["space", "dash", "dotdot", "newline", "no-unit", "zero", "option", "key-options", "two-keys", "no-key"])
def test_authorize_refuses_what_could_widen_the_forced_command(name, quota, key):
    with pytest.raises(ValueError):
        server.key_line(CONF, name, quota, key)


def test_a_registration_keeps_the_msps_own_keys_and_replaces_its_own_line():
    current = "ssh-ed25519 AAAAmsp msp@laptop\nold cabinet-backup@cab-a\nother cabinet-backup@cab-b\nold2 cabinet-backup@cab-a\n"
    assert server.with_key(current, "cab-a", "new cabinet-backup@cab-a") == \
        "ssh-ed25519 AAAAmsp msp@laptop\nnew cabinet-backup@cab-a\nother cabinet-backup@cab-b\n"
    assert server.with_key("", "cab-a", "new cabinet-backup@cab-a") == "new cabinet-backup@cab-a\n"
    # cab-a's mark is not cab-aa's.
    assert "x cabinet-backup@cab-aa" in server.with_key("x cabinet-backup@cab-aa\n", "cab-a", "y cabinet-backup@cab-a")


def key_for(name: str) -> str:
    """A key of its own for each practice (one key on two lines is refused)."""
    return "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + hashlib.sha256(name.encode()).hexdigest()


def _register_many(keys: str, lock: str, names: list[str]) -> None:
    for name in names:
        server.authorize(Path(keys), Path(lock), name, server.key_line(CONF, name, "1T", key_for(name)), False)


def test_practices_registering_at_once_all_keep_their_line(tmp_path):
    """AWX runs the practices' jobs side by side, all delegated to one off-site server: every
    registration must land. The role used lineinfile, a read-edit-rename of the whole file with
    no lock, which lost the lines written meanwhile; the role now calls the server's helper
    (checked here too), and eight writers of 25 practices each lose nothing."""
    offsite = yaml.safe_load((ROOT / "roles/backup/tasks/offsite.yml").read_text(encoding="utf-8"))
    (task,) = [t for t in offsite if "borg serve --append-only on its own repository" in t["name"]]
    assert "ansible.builtin.command" in task and "'authorize'" in task["ansible.builtin.command"]["argv"], task
    keys, lock = tmp_path / "home" / ".ssh" / "authorized_keys", tmp_path / "state" / "authorize.lock"
    keys.parent.mkdir(parents=True, mode=0o700)
    keys.write_text("ssh-ed25519 AAAAmsp msp@laptop\n", encoding="utf-8")
    batches = [[f"cab-{w}-{i}" for i in range(25)] for w in range(8)]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_register_many, args=(str(keys), str(lock), batch)) for batch in batches]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    lines = keys.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "ssh-ed25519 AAAAmsp msp@laptop"
    assert sorted(line.rsplit("@", 1)[1] for line in lines[1:]) == sorted(n for batch in batches for n in batch)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert not list(keys.parent.glob(".*tmp"))


def test_authorize_in_check_mode_writes_nothing_and_says_it_would(tmp_path):
    keys, lock = tmp_path / "home" / ".ssh" / "authorized_keys", tmp_path / "state" / "authorize.lock"
    line = server.key_line(CONF, "cab-a", "1T", KEY)
    assert server.authorize(keys, lock, "cab-a", line, True) is True
    assert not keys.parent.exists() and not lock.parent.exists()
    assert server.authorize(keys, lock, "cab-a", line, False) is True
    assert server.authorize(keys, lock, "cab-a", line, True) is False
    assert server.authorize(keys, lock, "cab-a", line, False) is False


def test_authorize_follows_no_link_planted_for_the_keys(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("precious\n", encoding="utf-8")
    keys = tmp_path / "home" / ".ssh" / "authorized_keys"
    keys.parent.mkdir(parents=True, mode=0o700)
    keys.symlink_to(target)
    with pytest.raises(OSError):
        server.authorize(keys, tmp_path / "state" / "authorize.lock", "cab-a", server.key_line(CONF, "cab-a", "1T", KEY), False)
    assert target.read_text(encoding="utf-8") == "precious\n"


def test_a_name_registered_with_another_key_is_refused_unless_the_machine_was_reinstalled(tmp_path):
    """Two clients' inventories may both name a machine `serveur`: the second practice must not
    take the first one's repository (hostile read, session 15: the helper replaced the line)."""
    keys, lock = tmp_path / "home" / ".ssh" / "authorized_keys", tmp_path / "state" / "authorize.lock"
    first = server.key_line(CONF, "serveur", "1T", KEY)
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOfAnotherPracticeXXXXXXXXXXXXXXXXXXXX"
    assert server.authorize(keys, lock, "serveur", first, False) is True
    with pytest.raises(server.Refused, match="registered with another key"):
        server.authorize(keys, lock, "serveur", server.key_line(CONF, "serveur", "1T", other), False)
    assert keys.read_text(encoding="utf-8") == first + "\n"
    # The machine was reinstalled: its new key replaces the old one when asked.
    assert server.authorize(keys, lock, "serveur", server.key_line(CONF, "serveur", "1T", other), False, True) is True
    assert other in keys.read_text(encoding="utf-8") and KEY not in keys.read_text(encoding="utf-8")


def test_a_key_already_on_another_line_is_refused(tmp_path):
    """sshd uses the first line a key matches: a compromised practice must not register the MSP's
    key, or another practice's, under its own forced command."""
    keys, lock = tmp_path / "home" / ".ssh" / "authorized_keys", tmp_path / "state" / "authorize.lock"
    keys.parent.mkdir(parents=True, mode=0o700)
    keys.write_text(f"{KEY} msp@laptop\n", encoding="utf-8")
    with pytest.raises(server.Refused, match="already authorized on another line"):
        server.authorize(keys, lock, "cab-a", server.key_line(CONF, "cab-a", "1T", KEY), False)
    other = server.key_line(CONF, "cab-b", "1T", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyOfBXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")
    assert server.authorize(keys, lock, "cab-b", other, False) is True
    with pytest.raises(server.Refused):
        server.authorize(keys, lock, "cab-c", other.replace("cab-b", "cab-c"), False)
    assert keys.read_text(encoding="utf-8") == f"{KEY} msp@laptop\n{other}\n"


def test_an_msps_line_with_an_odd_character_stays_one_line():
    """str.splitlines() would cut a line at \\x0c or \\u2028 in an MSP key's comment."""
    current = "ssh-ed25519 AAAAmsp msp\x0c\u2028laptop\n"
    assert server.with_key(current, "cab-a", "new cabinet-backup@cab-a") == current + "new cabinet-backup@cab-a\n"
