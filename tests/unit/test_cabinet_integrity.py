"""cabinet-integrity (role system_baseline): which of AIDE's differences reach the MSP."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest
from conftest import Clock, load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "system_baseline" / "files" / "usr" / "local" / "sbin" / "cabinet-integrity"
T0 = 1_800_000_000.0  # a time after the database was built


@pytest.fixture(scope="module")
def integrity():
    return load_script(SCRIPT)


def stamp(epoch: float) -> str:
    """A dpkg.log line's time for ``epoch`` (dpkg writes the host's local time)."""
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


# ------------------------------------------------------------------------- dpkg's windows
def test_dpkg_lines_close_together_are_one_window_with_margins(integrity):
    lines = [f"{stamp(T0 + 10)} startup archives unpack\n", f"{stamp(T0 + 70)} status installed foo:amd64 2\n",
             f"{stamp(T0 + 5000)} status installed bar:amd64 1\n", "garbage line\n", ""]
    windows = integrity.dpkg_windows(lines, T0)
    assert windows == [(T0 + 10 - integrity.WINDOW_BEFORE, T0 + 70 + integrity.WINDOW_AFTER),
                       (T0 + 5000 - integrity.WINDOW_BEFORE, T0 + 5000 + integrity.WINDOW_AFTER)]


def test_dpkg_operations_before_the_database_explain_nothing(integrity):
    lines = [f"{stamp(T0 - 86400)} status installed foo:amd64 1\n"]
    assert integrity.dpkg_windows(lines, T0) == []


def test_rotated_and_compressed_dpkg_logs_are_all_read(integrity, tmp_path):
    import gzip

    (tmp_path / "dpkg.log").write_text(f"{stamp(T0 + 1)} a\n", encoding="utf-8")
    (tmp_path / "dpkg.log.1").write_text(f"{stamp(T0 + 2)} b\n", encoding="utf-8")
    with gzip.open(tmp_path / "dpkg.log.2.gz", "wt", encoding="utf-8") as handle:
        handle.write(f"{stamp(T0 + 3)} c\n")
    assert len(integrity.read_dpkg_logs(str(tmp_path))) == 3


def test_recorded_sums_come_from_md5sums_and_conffiles(integrity, tmp_path):
    info = tmp_path / "info"
    info.mkdir()
    (info / "foo.md5sums").write_text("d41d8cd98f00b204e9800998ecf8427e  usr/bin/foo\n", encoding="utf-8")
    (info / "foo.list").write_text("/.\n/usr/bin/foo\n/etc/foo.conf\n", encoding="utf-8")
    status = tmp_path / "status"
    status.write_text("Package: foo\nStatus: install ok installed\nConffiles:\n /etc/foo.conf 0123abc\n"
                      " /etc/old.conf 4567def obsolete\nDescription: x\n multi-line text /etc/not-a-conffile 89ab\n",
                      encoding="utf-8")
    sums, conffiles = integrity.dpkg_md5s(str(info), str(status))
    assert sums == {"/usr/bin/foo": {"d41d8cd98f00b204e9800998ecf8427e"}, "/etc/foo.conf": {"0123abc"},
                    "/etc/old.conf": {"4567def"}}
    assert conffiles == {"/etc/foo.conf", "/etc/old.conf"}
    assert "/etc/foo.conf" in integrity.owned_paths(str(info))


# ------------------------------------------------------------------------- classify
DPKG = [(T0 + 100, T0 + 500)]
RUN = [(T0 + 1000, T0 + 2000)]


def classify(integrity, report, ctimes, md5s=None, recorded=None, owned=frozenset(), owned_before=frozenset(),
             controlled=lambda path: True, conffiles=frozenset(), left_out=lambda path: False, marks=None, pending=None):
    return integrity.classify(report, ctime=ctimes.get, md5=(md5s or {}).get, recorded=recorded or {},
                              owned=set(owned), owned_before=set(owned_before), dpkg=DPKG, runs=RUN,
                              controlled=controlled, conffiles=conffiles, left_out=left_out, marks=marks,
                              pending=pending)


def test_a_package_update_is_explained_when_the_content_is_the_package_s(integrity):
    report = {"changed": {"/usr/bin/foo": "f   ...    .C..."}, "added": {"/usr/share/foo/new": "f++++"}}
    explained, unexplained = classify(integrity, report, {"/usr/bin/foo": T0 + 200, "/usr/share/foo/new": T0 + 300},
                                      md5s={"/usr/bin/foo": "aaa"}, recorded={"/usr/bin/foo": {"aaa"}})
    assert unexplained == []
    assert len(explained) == 2


def test_a_file_changed_during_an_update_but_not_as_its_package_installed_it_is_reported(integrity):
    report = {"changed": {"/etc/foo.conf": "f   ...    .C..."}}
    explained, unexplained = classify(integrity, report, {"/etc/foo.conf": T0 + 200},
                                      md5s={"/etc/foo.conf": "evil"}, recorded={"/etc/foo.conf": {"0123abc"}},
                                      conffiles={"/etc/foo.conf"})
    assert unexplained == ["changed /etc/foo.conf (not the content its package installed)"]


def test_a_change_outside_every_window_is_reported(integrity):
    report = {"changed": {"/etc/sudoers.d/x": "f   ...    .C..."}, "added": {"/etc/cron.d/evil": "f++++"}}
    _, unexplained = classify(integrity, report, {"/etc/sudoers.d/x": T0 + 700, "/etc/cron.d/evil": T0 + 3000})
    assert unexplained == ["changed /etc/sudoers.d/x", "added /etc/cron.d/evil"], "changes come before additions"


def test_a_cabinet_hardening_run_explains_its_changes(integrity):
    report = {"changed": {"/etc/ssh/sshd_config": "f   ...    .C..."}}
    explained, unexplained = classify(integrity, report, {"/etc/ssh/sshd_config": T0 + 1500},
                                      md5s={"/etc/ssh/sshd_config": "mine"}, recorded={"/etc/ssh/sshd_config": {"pkg"}},
                                      conffiles={"/etc/ssh/sshd_config"})
    assert unexplained == [] and explained == ["changed /etc/ssh/sshd_config (a cabinet-hardening run)"]


def test_a_removed_file_is_a_package_s_only_if_one_shipped_it_and_none_does_now(integrity):
    report = {"removed": {"/usr/sbin/sshd": "f----", "/usr/share/gone/dir/file": "f----",
                          "/etc/sudoers.d/00-cabinet-baseline": "f----"}}
    explained, unexplained = classify(integrity, report, {"/usr/sbin": T0 + 200, "/usr/share": T0 + 200, "/etc/sudoers.d": T0 + 200},
                                      owned={"/usr/sbin/sshd"}, owned_before={"/usr/sbin/sshd", "/usr/share/gone/dir/file"})
    assert unexplained == ["removed /etc/sudoers.d/00-cabinet-baseline (no package shipped it)",
                           "removed /usr/sbin/sshd (a package still lists it)"]
    # A package removed with its folders: the nearest folder still there dates the removal.
    assert explained == ["removed /usr/share/gone/dir/file (a package operation)"]


def test_dpkg_s_own_database_changes_with_every_package_operation(integrity):
    report = {"removed": {"/var/lib/dpkg/info/foo.list": "f----"}, "added": {"/var/lib/dpkg/info/bar.list": "f++++"}}
    explained, unexplained = classify(integrity, report, {"/var/lib/dpkg/info": T0 + 200, "/var/lib/dpkg/info/bar.list": T0 + 200})
    assert unexplained == [] and len(explained) == 2
    _, late = classify(integrity, report, {"/var/lib/dpkg/info": T0 + 700, "/var/lib/dpkg/info/bar.list": T0 + 700})
    assert len(late) == 2, "outside a package operation, dpkg's database changed by someone else"


def test_without_the_packages_files_of_the_last_build_no_removal_is_a_package_s(integrity):
    report = {"removed": {"/usr/share/gone/file": "f----"}}
    _, unexplained = integrity.classify(report, ctime={"/usr/share": T0 + 200}.get, md5={}.get, recorded={}, owned=set(),
                                        owned_before=None, dpkg=DPKG, runs=RUN, controlled=lambda path: True)
    assert unexplained == ["removed /usr/share/gone/file (no package shipped it)"]


def test_merged_usr_paths_are_judged_by_the_names_dpkg_recorded(integrity, monkeypatch):
    """Debian's packages list /bin/x; AIDE sees /usr/bin/x (/bin is a link to usr/bin)."""
    monkeypatch.setattr(integrity.os.path, "islink", lambda path: path in integrity.MERGED)
    report = {"changed": {"/usr/bin/login": "f ... .C"}, "removed": {"/usr/sbin/agetty": "f----"}}
    explained, unexplained = classify(integrity, report, {"/usr/bin/login": T0 + 200, "/usr/sbin": T0 + 200},
                                      md5s={"/usr/bin/login": "evil"}, recorded={"/bin/login": {"good"}},
                                      owned={"/sbin/agetty"})
    assert unexplained == ["changed /usr/bin/login (not the content its package installed)",
                           "removed /usr/sbin/agetty (a package still lists it)"]


def test_only_what_root_alone_controls_can_be_explained(integrity):
    """A service account's file changed during the night's update, or during a run, is its
    owner's doing as much as the update's: reported."""
    report = {"changed": {"/var/www/html/index.php": "f ... .C", "/etc/ssh/sshd_config": "f ... .C"}}
    explained, unexplained = classify(integrity, report, {"/var/www/html/index.php": T0 + 1500, "/etc/ssh/sshd_config": T0 + 1500},
                                      controlled=lambda path: not path.startswith("/var/www"))
    assert unexplained == ["changed /var/www/html/index.php (a user other than root can change it)"]
    assert explained == ["changed /etc/ssh/sshd_config (a cabinet-hardening run)"]


class FakeTree:
    """os.lstat over a made-up tree: path -> (uid, mode)."""

    def __init__(self, entries):
        self.entries = entries

    def __call__(self, path):
        if path not in self.entries:
            raise FileNotFoundError(path)
        uid, mode = self.entries[path]
        return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


ROOT_DIR = 0o040755
TREE = {"/": (0, ROOT_DIR), "/etc": (0, ROOT_DIR), "/etc/ssh": (0, ROOT_DIR), "/etc/ssh/sshd_config": (0, 0o100644),
        "/var": (0, ROOT_DIR), "/var/www": (33, ROOT_DIR), "/var/www/index.php": (0, 0o100644),
        "/srv": (0, 0o040775), "/srv/x": (0, 0o100644), "/etc/link": (0, 0o120777), "/etc/home": (1000, 0o100644)}


@pytest.mark.parametrize("path, expected", [
    ("/etc/ssh/sshd_config", True),
    ("/etc/ssh/gone", True),                   # removed: its folders are root's
    ("/etc/gone/deeper/file", True),           # removed with its folder: the nearest folder there says
    ("/etc/link", True),                       # a symlink's own mode says nothing
    ("/var/www/index.php", False),             # root's file in www-data's folder
    ("/var/www/gone", False),
    ("/srv/x", False),                         # a group-writable folder
    ("/etc/home", False),                      # a user's file
])
def test_root_controlled_reads_the_path_and_every_folder_above(integrity, monkeypatch, path, expected):
    monkeypatch.setattr(integrity.os, "lstat", FakeTree(TREE))
    assert integrity.root_controlled(path) is expected


def test_a_change_made_root_s_by_a_later_chmod_is_not_the_window_s(integrity):
    """A user wrote /etc/x while others could; a run (or a package script) then made it
    root's: the details say what it was."""
    report = {"changed": {"/etc/x": "f ...", "/etc/y": "f ..."},
              "details": {"/etc/x": {"perm": {"old": "-rw-rw-rw-", "new": "-rw-r--r--"}, "sha512": {}},
                          "/etc/y": {"uid": {"old": 1000, "new": 0}}}}
    _, unexplained = classify(integrity, report, {"/etc/x": T0 + 1500, "/etc/y": T0 + 1500})
    assert unexplained == ["changed /etc/x (a user other than root could change it before)",
                           "changed /etc/y (a user other than root could change it before)"]


def test_a_shipped_file_not_as_its_package_made_it_is_reported_whatever_the_window(integrity):
    report = {"changed": {"/usr/bin/sudo": "f ... .C"}}
    _, unexplained = classify(integrity, report, {"/usr/bin/sudo": T0 + 1500},  # in a run's window
                              md5s={"/usr/bin/sudo": "evil"}, recorded={"/usr/bin/sudo": {"good"}})
    assert unexplained == ["changed /usr/bin/sudo (not the content its package installed)"]


def test_the_same_file_changed_again_is_a_new_alert_id(integrity):
    report = {"changed": {"/etc/x": "f ... .C"}}
    first, again = [], []
    classify(integrity, report, {"/etc/x": T0 + 3000}, marks=first)
    classify(integrity, report, {"/etc/x": T0 + 4000}, marks=again)
    assert first and integrity.fingerprint(first) != integrity.fingerprint(again)


# ------------------------------------------------------------------------- runs
def test_a_run_s_window_runs_from_begin_to_seal(integrity, tmp_path):
    clock = Clock(T0)
    token = integrity.begin_run(str(tmp_path / "runs"), clock=clock)
    clock.now += 120
    assert integrity.run_windows(str(tmp_path / "runs"), clock=clock) == [(token, T0, T0 + 120, False)]
    assert integrity.seal_run(token, str(tmp_path / "runs"), clock=clock)
    clock.now += 5000
    assert integrity.run_windows(str(tmp_path / "runs"), clock=clock) == [(token, T0, T0 + 120, True)]
    assert not integrity.seal_run("12345", str(tmp_path / "runs"), clock=clock)
    assert oct(os.stat(tmp_path / "runs").st_mode & 0o777) == "0o700"


def test_a_run_that_never_sealed_explains_max_run_seconds_at_most(integrity, tmp_path):
    clock = Clock(T0)
    token = integrity.begin_run(str(tmp_path), clock=clock)
    clock.now += 10 * integrity.MAX_RUN
    assert integrity.run_windows(str(tmp_path), clock=clock) == [(token, T0, T0 + integrity.MAX_RUN, False)]


def test_the_database_moving_forward_forgets_ended_runs_only(integrity, tmp_path):
    clock = Clock(T0)
    ended = integrity.begin_run(str(tmp_path), clock=clock)
    clock.now += 10
    integrity.seal_run(ended, str(tmp_path), clock=clock)
    clock.now += 10
    running = integrity.begin_run(str(tmp_path), clock=clock)
    clock.now += 10
    integrity.forget_runs(clock.now, str(tmp_path), clock=clock)
    assert [w[0] for w in integrity.run_windows(str(tmp_path), clock=clock)] == [running]
    clock.now += integrity.MAX_RUN + 60
    integrity.forget_runs(clock.now, str(tmp_path), clock=clock)
    assert integrity.run_windows(str(tmp_path), clock=clock) == []
    assert ended != running


@pytest.mark.parametrize("argv", [[], ["seal"], ["seal", "../../etc/passwd"], ["seal", "1", "2"], ["check", "x"],
                                  ["seal", "１２"], ["remove"]])
def test_bad_arguments_are_refused_before_anything_is_read(integrity, argv, capsys):
    assert integrity.main(argv) == 2
    assert "usage" in capsys.readouterr().err


# ------------------------------------------------------------------------- check, with AIDE stood in for
class Host:
    """A host in tmp_path: AIDE's database, the state, the alerts raised."""

    def __init__(self, integrity, tmp_path, monkeypatch, differences=None, built=True):
        self.integrity = integrity
        self.db = tmp_path / "aide.db"
        self.new = tmp_path / "aide.db.new"
        if built:
            self.db.write_text("old", encoding="utf-8")
        self.alerts: list[tuple[str, str, str]] = []
        self.differences = differences or {}
        self.removed = False
        (tmp_path / "integrity.json").write_text(json.dumps({"realert_days": 7, "excluded": ["/srv/pacs"]}), encoding="utf-8")
        config = tmp_path / "integrity.json"
        (tmp_path / "aide.conf.d").mkdir()
        (tmp_path / "aide.conf").write_text("Checksums = sha512\n", encoding="utf-8")
        for name, value in {"DATABASE": str(self.db), "NEW_DATABASE": str(self.new), "CONFIG": str(config),
                            "STATE": str(tmp_path / "state" / "state.json"), "RUNS": str(tmp_path / "state" / "runs"),
                            "OWNED": str(tmp_path / "state" / "owned.json.gz"),
                            "LAST_REPORT": str(tmp_path / "state" / "last-report.json"),
                            "AIDE_CONF": str(tmp_path / "aide.conf"), "AIDE_CONF_D": str(tmp_path / "aide.conf.d"),
                            "LOCK": str(tmp_path / "lock" / "lock")}.items():
            monkeypatch.setattr(integrity, name, value)
        monkeypatch.setattr(integrity, "aide", self.aide)
        monkeypatch.setattr(integrity, "alert", self.alert)
        self.incidents: list = []  # each alert's incident kind (None: not a new incident)
        monkeypatch.setattr(integrity, "dpkg_md5s", lambda: ({}, set()))
        monkeypatch.setattr(integrity, "owned_paths", set)
        monkeypatch.setattr(integrity, "read_dpkg_logs", list)
        monkeypatch.setattr(integrity, "root_controlled", lambda path: True)
        # The files' ctime: outside every window unless a test says otherwise.
        self.file_ctime = 1.0
        monkeypatch.setattr(integrity, "ctime_of", self.ctime_of)

    def ctime_of(self, path):
        if path == str(self.db):
            return os.lstat(self.db).st_ctime if self.db.exists() else None
        return self.file_ctime

    def aide(self, mode):
        self.new.write_text(f"new {mode}", encoding="utf-8")
        if mode == "init":
            return 0, {}
        if self.removed:
            return (2 if self.differences else 0), {"removed": self.differences}
        return (4 if self.differences else 0), {"changed": self.differences}

    def alert(self, practice, severity, title, details, **kw):
        self.alerts.append((severity, title, details))
        self.incidents.append((kw.get("incident"), kw.get("incident_key")))
        return True

    def run(self, *argv):
        return self.integrity.main(list(argv))


def test_unexplained_changes_alert_keep_the_database_and_do_not_repeat_daily(integrity, tmp_path, monkeypatch, capsys):
    host = Host(integrity, tmp_path, monkeypatch, {"/etc/sudoers.d/x": "f ... .C"})
    assert host.run("check") == integrity.ALERTED
    assert host.db.read_text() == "old" and not host.new.exists(), "the database moved past an unexplained change"
    assert [a[:2] for a in host.alerts] == [("warning", "Files changed outside package updates")]
    assert "changed /etc/sudoers.d/x" in host.alerts[0][2]
    assert host.run("check") == 0 and len(host.alerts) == 1, "alerted again the next day"
    host.differences["/etc/cron.d/y"] = "f ... .C"
    assert host.run("check") == integrity.ALERTED and len(host.alerts) == 2, "a new change waited for the re-alert"
    (kind1, key1), (kind2, key2) = host.incidents
    assert kind1 == kind2 == "integrity" and key1 != key2, "each new set of changes is its own incident"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["database"] == "kept"


def test_accept_takes_the_host_as_it_is(integrity, tmp_path, monkeypatch):
    host = Host(integrity, tmp_path, monkeypatch, {"/etc/sudoers.d/x": "f ... .C"})
    assert host.run("check") == integrity.ALERTED
    assert host.run("accept") == 0
    assert host.db.read_text() == "new init"
    host.differences.clear()
    assert host.run("check") == 0 and len(host.alerts) == 1


def test_a_run_s_changes_are_explained_and_the_database_moves_forward(integrity, tmp_path, monkeypatch):
    host = Host(integrity, tmp_path, monkeypatch, {"/etc/cabinet/backup.json": "f ... .C"})
    assert host.run("accept") == 0  # a database of this configuration (else the seal builds one)
    assert host.run("begin") == 0
    token = sorted(os.listdir(integrity.RUNS))[0]
    host.file_ctime = integrity.time.time()  # the run changed the file
    assert host.run("seal", token) == 0
    assert host.run("check") == 0 and host.alerts == []
    assert host.db.read_text() == "new update", "an explained difference kept the database back"
    assert os.listdir(integrity.RUNS) == [], "a run the database now holds is still explained"


def test_the_first_seal_builds_the_database(integrity, tmp_path, monkeypatch):
    host = Host(integrity, tmp_path, monkeypatch, built=False)
    assert host.run("seal", integrity.begin_run()) == 0
    assert host.db.read_text() == "new init" and host.alerts == []


@pytest.mark.parametrize("built_before", [True, False])
def test_a_missing_database_is_rebuilt_and_alerted(integrity, tmp_path, monkeypatch, built_before):
    host = Host(integrity, tmp_path, monkeypatch, built=built_before)
    if built_before:
        assert host.run("accept") == 0
        host.db.unlink()
    assert host.run("check") == integrity.ALERTED
    assert host.db.read_text() == "new init"
    assert [a[:2] for a in host.alerts] == [("critical" if built_before else "warning", "File integrity database missing")]


def test_aide_failing_is_a_critical_alert_and_leaves_no_half_database(integrity, tmp_path, monkeypatch):
    host = Host(integrity, tmp_path, monkeypatch, {"/etc/x": "f"})

    def broken(mode):
        host.new.write_text("half", encoding="utf-8")
        raise RuntimeError("aide --update failed (exit 17): cannot read the database")

    monkeypatch.setattr(integrity, "aide", broken)
    assert host.run("check") == integrity.ALERTED
    assert [a[:2] for a in host.alerts] == [("critical", "File integrity check failed")]
    assert host.db.read_text() == "old" and not host.new.exists()


def test_a_run_s_seal_alerts_for_a_removed_database_before_building_a_new_one(integrity, tmp_path, monkeypatch):
    host = Host(integrity, tmp_path, monkeypatch)
    assert host.run("accept") == 0
    host.db.unlink()
    assert host.run("seal", integrity.begin_run()) == 0, "the run itself did not fail: it alerted"
    assert host.db.read_text() == "new init"
    assert [a[:2] for a in host.alerts] == [("critical", "File integrity database missing")]


# ------------------------------------------------------------------------- AIDE's report, read exactly or not at all
def test_a_report_reads_when_it_agrees_with_the_exit_code(integrity):
    raw = json.dumps({"start_time": "x", "number_of_entries": {"total": 9, "added": 1, "changed": 1},
                      "added": {"/etc/a": "f++++"}, "changed": {"/etc/b": "f   ...    .C"},
                      "details": {"/etc/b": {"sha512": {"old": "a", "new": "b"}}}}).encode()
    report = integrity.parse_report(5, raw)
    assert set(report["added"]) == {"/etc/a"} and set(report["changed"]) == {"/etc/b"}


N = b'"number_of_entries": {"total": 10, "added": 1, "removed": 0, "changed": 1}'


@pytest.mark.parametrize("code, raw, why", [
    # A name that could add a key of its own (were a quote not escaped): a key twice.
    (4, b'{"changed": {"/var/www/P": "x", "/etc/shadow": "d", "/var/www/Q": "f"}, "changed": {}}', "twice"),
    (4, b'{"changed": {"/etc/a": "f", "/etc/a": "d"}}', "twice"),
    # ... or entries that do not add up to AIDE's own counts.
    (5, b'{' + N + b', "added": {"/etc/a": "f", "/etc/b": "f"}, "changed": {"/etc/c": "f"}}', "counts 1"),
    (5, b'{"added": {"/etc/a": "f"}, "changed": {"/etc/c": "f"}}', "counts None"),
    (1, b'{"added": {"/etc/a', "cannot be read"),
    # An empty report, or one that lacks what the exit code says: never "no difference".
    (4, b"", "exit code"),
    (1, b'{"added": {}}', "exit code"),
    (0, b'{"removed": {"/etc/x": "f----"}}', "exit code"),
    (4, b'{"number_of_entries": {"changed": 1}, "changed": {"/etc/b": "f"}, "details": {"/etc/shadow": {"perm": {}}}}',
     "does not list"),
    (4, b'{"changed": ["/etc/b"]}', "not a list of entries"),
    # A changed folder without its details would pass as "its entries only".
    (4, b'{"number_of_entries": {"changed": 1}, "changed": {"/etc/cron.d": "d =...."}}', "without details"),
    (4, b'[1, 2]', "not a JSON object"),
])
def test_a_report_that_does_not_read_exactly_is_refused(integrity, code, raw, why):
    with pytest.raises(RuntimeError, match=why):
        integrity.parse_report(code, raw)


def test_file_names_aide_writes_raw_are_read_not_refused(integrity):
    """What Debian 12's AIDE 0.18.3 printed for files named caf\xe9, new<LF>line and unit<US>sep
    (the lab, session 11): a user's odd file name must not blind the check."""
    raw = (b'{"number_of_entries": {"total": 5, "added": 3}, "added": {"/etc/wd/caf\xe9": "f++++", '
           b'"/etc/wd/new\\nline": "f++++", "/etc/wd/unit\x1fsep": "f++++"}}')
    report = integrity.parse_report(1, raw)
    assert sorted(integrity.printable(name) for name in report["added"]) == [
        "/etc/wd/caf\\udce9", "/etc/wd/new\\nline", "/etc/wd/unit\\x1fsep"]


# ------------------------------------------------------------------------- accepting, configuration, faults
def test_accept_with_the_alert_id_takes_those_changes_only(integrity, tmp_path, monkeypatch, capsys):
    host = Host(integrity, tmp_path, monkeypatch, {"/etc/sudoers.d/x": "f ... .C"})
    assert host.run("check") == integrity.ALERTED
    alert_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["alert_id"]
    assert alert_id in host.alerts[0][2], "the alert does not give the id to accept it with"
    host.differences["/etc/cron.d/new"] = "f ... .C"  # something else changed since the MSP looked
    assert host.run("accept", alert_id) == integrity.REFUSED
    assert host.db.read_text() == "old" and not host.new.exists()
    del host.differences["/etc/cron.d/new"]
    assert host.run("accept", alert_id) == 0
    assert host.db.read_text() == "new update"


def test_a_run_that_changes_aide_s_configuration_compares_and_absorbs_nothing(integrity, tmp_path, monkeypatch, capsys):
    """Other exclusions: the seal compares under the new rules (no rebuild that would take in,
    unseen, what changed since the last check)."""
    host = Host(integrity, tmp_path, monkeypatch)
    assert host.run("accept") == 0
    assert host.run("seal", integrity.begin_run()) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"database": "present"}
    host.differences["/etc/cron.d/evil"] = "f ... .C"  # waiting for the next daily check
    (tmp_path / "aide.conf.d" / "90_cabinet_hardening").write_text("!/srv/pacs(/|$)\n", encoding="utf-8")
    host.db.write_text("accepted", encoding="utf-8")
    assert host.run("seal", integrity.begin_run()) == 0, "the seal failed the run"
    assert host.db.read_text() == "accepted", "a configuration change took in an unexplained change"
    assert [a[:2] for a in host.alerts] == [("warning", "Files changed outside package updates")]
    del host.differences["/etc/cron.d/evil"]
    host.differences["/srv/pacs/old"] = "f ... .C"
    host.removed = True
    assert host.run("check") == 0
    assert host.db.read_text() == "new update"


def test_what_is_left_out_now_is_no_difference(integrity):
    explained, unexplained = classify(integrity, {"removed": {"/srv/pacs/img": "f----"}}, {"/srv/pacs": T0 + 3000},
                                      left_out=lambda path: path.startswith("/srv/pacs/"))
    assert explained == ["removed /srv/pacs/img (left out of the check now)"] and unexplained == []


def test_a_database_the_host_had_before_the_toolkit_is_rebuilt_without_an_alert(integrity, tmp_path, monkeypatch):
    host = Host(integrity, tmp_path, monkeypatch)  # aide.db there, no state of ours
    assert host.run("seal", integrity.begin_run()) == 0
    assert host.db.read_text() == "new init" and host.alerts == []


def test_the_daily_check_does_not_build_the_first_database_during_the_first_run(integrity, tmp_path, monkeypatch):
    host = Host(integrity, tmp_path, monkeypatch, built=False)
    integrity.begin_run()
    assert host.run("check") == 0
    assert not host.db.exists() and host.alerts == []


def test_anything_that_stops_the_check_reaches_the_msp(integrity, tmp_path, monkeypatch):
    host = Host(integrity, tmp_path, monkeypatch, {"/etc/x": "f"})

    def crash(mode):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(integrity, "aide", crash)
    assert host.run("check") == integrity.ALERTED
    assert [a[:2] for a in host.alerts] == [("critical", "File integrity check failed")]
    assert "UnicodeDecodeError" in host.alerts[0][2]


def test_a_user_s_many_files_cannot_bury_a_system_change_in_the_alert(integrity):
    lines = [f"added /var/www/{n:03} (a user other than root can change it)" for n in range(40)] + ["changed /etc/sudoers"]
    shown = integrity.listed(integrity.by_weight(sorted(lines)))
    assert shown.splitlines()[0] == "- changed /etc/sudoers"


def test_a_change_alerted_before_is_not_taken_in_by_a_later_run(integrity, tmp_path, monkeypatch, capsys):
    """Someone edits /etc/pam.d/su; the check alerts; the next run puts its own line back (the
    file's ctime now in the run's window): still reported, with the same line, until the MSP
    accepts it (the file changed again, so the alert id is a new one, and alerted)."""
    host = Host(integrity, tmp_path, monkeypatch, {"/etc/pam.d/su": "f ... .C"})
    assert host.run("accept") == 0
    assert host.run("check") == integrity.ALERTED
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    token = integrity.begin_run()
    host.file_ctime = integrity.time.time()  # the run touched the file
    assert host.run("seal", token) == 0
    assert host.run("check") == integrity.ALERTED
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["unexplained"] == first["unexplained"] and again["database"] == "kept", "the run took the change in"
    assert again["alert_id"] != first["alert_id"] and len(host.alerts) == 2


def test_the_alert_id_does_not_move_with_a_user_s_own_files(integrity):
    report = {"changed": {"/etc/x": "f ... .C", "/var/www/y": "f ... .C"}}
    first, again = [], []
    user = lambda path: not path.startswith("/var/www")  # noqa: E731
    classify(integrity, report, {"/etc/x": T0 + 3000, "/var/www/y": T0 + 3000}, controlled=user, marks=first)
    classify(integrity, report, {"/etc/x": T0 + 3000, "/var/www/y": T0 + 9000}, controlled=user, marks=again)
    assert first == again and len(first) == 1


def test_a_truncated_rotated_dpkg_log_does_not_stop_the_check(integrity, tmp_path):
    (tmp_path / "dpkg.log").write_text(f"{stamp(T0 + 1)} a\n", encoding="utf-8")
    (tmp_path / "dpkg.log.2.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    assert len(integrity.read_dpkg_logs(str(tmp_path))) == 1


def test_an_alerted_file_a_package_put_back_as_it_shipped_it_is_no_longer_pending(integrity):
    report = {"changed": {"/usr/share/x/data": "f ... .C"}}
    pending = {"/usr/share/x/data": "changed /usr/share/x/data (not the content its package installed)"}
    explained, unexplained = classify(integrity, report, {"/usr/share/x/data": T0 + 200}, md5s={"/usr/share/x/data": "good"},
                                      recorded={"/usr/share/x/data": {"good"}}, pending=pending)
    assert unexplained == [] and explained == ["changed /usr/share/x/data (a package operation)"]
    _, still = classify(integrity, report, {"/usr/share/x/data": T0 + 200}, md5s={"/usr/share/x/data": "evil"},
                        recorded={"/usr/share/x/data": {"good"}}, pending=pending)
    assert still == [pending["/usr/share/x/data"]]
