"""cabinet-av (role antivirus): the logic that decides, without clamd or containers.

clamd is replaced by a fake that "detects" a marker in a file's content. The attacks of
issue #12 item 1 are played as a local user would: a folder swapped for a symlink between
the scan and the quarantine, and a file name holding a newline that forges a FOUND line.

CABINET_AV_SCRIPT=/path/to/an/older/cabinet-av runs the same tests against another version
(for the old script, clamdscan's text output is faked instead of clamd's FILDES replies).
"""

from __future__ import annotations

import json
import errno
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(os.environ.get("CABINET_AV_SCRIPT", ROOT / "roles/antivirus/files/usr/local/sbin/cabinet-av"))
sys.path.insert(0, str(ROOT / "roles/alerting/files/usr/local/lib/cabinet"))

SIG = "Cabinet.Test.Marker.UNOFFICIAL"
MARKER = b"-".join([b"CABINET", b"HARDENING", b"TEST", b"MARKER", b"2026"])


def load_av():
    return load_script(SCRIPT, f"cabinet_av_under_test_{time.monotonic_ns()}")


class Lab:
    """A scan root, a folder outside it, a quarantine, state, and the alerts raised."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.av = load_av()
        self.tmp = tmp
        self.root = tmp / "srv" / "patients"
        self.outside = tmp / "etc"
        self.qdir = tmp / "var" / "quarantine"
        self.dbdir = tmp / "clamav"
        for folder in (self.root, self.outside, self.qdir, self.dbdir, tmp / "state"):
            folder.mkdir(parents=True)
        self.qdir.chmod(0o700)
        self.alerts: list[tuple[str, str, str]] = []
        self.incidents: list[tuple[str, str]] = []  # (kind, title) of the alerts that open an incident
        self.conf = {"alert_command": "/bin/false", "scan_paths": [str(self.root)], "exclude_paths": [],
                     "quarantine_dir": str(self.qdir), "database_dir": str(self.dbdir),
                     "state_dir": str(tmp / "state"), "signature_max_age_hours": 48, "realert_hours": 24,
                     "onaccess": False, "clamd_socket": str(tmp / "no-clamd.ctl"),
                     "onaccess_paths": [str(self.root)], "onaccess_log": str(tmp / "clamonacc.log")}
        monkeypatch.setattr(self.av, "LOCK", tmp / "cabinet-av.lock")
        monkeypatch.setattr(self.av, "alert", lambda conf, severity, title, details, incident=None, **kw: (
            self.incidents.append((incident, title)) if incident else None, self.alerts.append(
                (severity, title, details))) and True)
        monkeypatch.setattr(self.av, "ensure_clamd", lambda *a, **k: True)
        monkeypatch.setattr(self.av, "clamd_answers", lambda *a, **k: True)

    def write(self, path: Path, content: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def quarantined(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.qdir.glob("*.json"))]

    def scan(self, on_detection=None) -> int:
        """Run a scheduled scan with a fake clamd; ``on_detection(path)`` is the attacker's move
        once clamd has reported a file and before the quarantine acts."""
        av = self.av
        if hasattr(av, "clamd_scan_fd"):
            def scanner(fd: int):
                os.lseek(fd, 0, os.SEEK_SET)
                content = b""
                while block := os.read(fd, 1 << 16):
                    content += block
                if MARKER not in content:
                    return av.Verdict([])
                if on_detection:
                    on_detection(os.readlink(f"/proc/self/fd/{fd}"))
                return av.Verdict([SIG])
            return av.cmd_scan(self.conf, scanner=scanner)

        # The script of 751bd04: it parsed clamdscan's text output; fake that output exactly.
        def clamdscan(paths):
            out = []
            found = []
            for top in paths:
                for folder, _dirs, files in os.walk(top):
                    for name in files:
                        path = os.path.join(folder, name)
                        if not os.path.islink(path) and MARKER in Path(path).read_bytes():
                            out.append(f"{path}: {SIG} FOUND\n")
                            found.append(path)
            if on_detection:
                for path in found:
                    on_detection(path)
            return subprocess.CompletedProcess(["clamdscan"], 1 if found else 0, "".join(out), "")
        av.clamdscan = clamdscan
        return av.cmd_scan(self.conf)


@pytest.fixture()
def lab(tmp_path, monkeypatch) -> Lab:
    return Lab(tmp_path, monkeypatch)


# ----------------------------------------------------------------------------- the attacks
def test_a_folder_swapped_for_a_symlink_after_the_scan_moves_nothing_outside_the_roots(lab):
    """Item 1: d/shadow is detected; the user swaps d for a symlink to the outside folder."""
    infected = lab.write(lab.root / "d" / "shadow", b"harmless text " + MARKER)
    decoy_content = b"root:$y$secret-hash:19000:0:99999:7:::\n" + MARKER
    decoy = lab.write(lab.outside / "shadow", decoy_content)

    def swap(_path):
        if (lab.root / "d").is_symlink():
            return
        os.rename(lab.root / "d", lab.root / "d.orig")
        os.symlink(lab.outside, lab.root / "d")

    lab.scan(on_detection=swap)

    assert decoy.exists(), "the file outside the scan roots was moved"
    assert decoy.read_bytes() == decoy_content, "the file outside the scan roots was changed"
    # The file that was scanned (now under d.orig) is the one quarantined.
    assert not (lab.root / "d.orig" / "shadow").exists()
    records = lab.quarantined()
    assert [r["original_path"] for r in records] == [str(infected)]
    assert records[0]["signature"] == SIG


def test_a_newline_in_a_file_name_cannot_forge_a_detection(lab):
    """Item 1: a name holding a newline prints '<outside path>: SIG FOUND' on a line of its own."""
    decoy_content = b"secret settings " + MARKER
    decoy = lab.write(lab.outside / "passwd", decoy_content)
    forged = lab.root / "a\n"
    for part in decoy.parts[1:]:
        forged = forged / part
    infected = lab.write(forged, b"infected " + MARKER)

    lab.scan()

    assert decoy.exists() and decoy.read_bytes() == decoy_content, "the forged line moved a file outside the roots"
    assert not infected.exists(), "the file really detected was not quarantined"
    assert [r["original_path"] for r in lab.quarantined()] == [str(infected)]


def test_a_file_replaced_under_the_same_name_after_the_scan_is_left_alone(lab):
    """The user puts another file (a hard link would do the same) under the detected name."""
    infected = lab.write(lab.root / "facture.doc", b"infected " + MARKER)
    other = lab.write(lab.root / "other.doc", b"a different, clean file\n")

    def replace(_path):
        if other.exists():
            os.rename(other, infected)

    assert lab.scan(on_detection=replace) == 1
    assert infected.read_bytes() == b"a different, clean file\n", "a file that was not scanned was moved"
    assert lab.quarantined() == []
    assert [a for a in lab.alerts if "NOT quarantined" in a[1]], lab.alerts
    assert [kind for kind, title in lab.incidents if "NOT quarantined" in title] == ["virus"]


def test_a_hard_link_elsewhere_is_reported(lab):
    infected = lab.write(lab.root / "a.exe", b"x " + MARKER)
    os.link(infected, lab.root / "b.exe")
    assert lab.scan() == 1
    failures = [a for a in lab.alerts if "NOT quarantined" in a[1]]
    assert failures and "hard link" in failures[0][2]


def test_many_hard_links_are_copied_once(lab):
    """One infected file and 20 more names for it: one copy in the quarantine (a user must not
    make root fill the disk), every name removed, each recorded."""
    infected = lab.write(lab.root / "a.exe", b"x " + MARKER + b" " + b"0" * 100_000)
    for i in range(20):
        os.link(infected, lab.root / f"link{i:02}.exe")
    lab.scan()
    contents = [p for p in lab.qdir.iterdir() if not p.name.endswith(".json")]
    assert len(contents) == 1, [p.name for p in contents]
    assert [p.name for p in lab.root.iterdir() if p.name.endswith(".exe")] == []
    record = lab.quarantined()[0]
    assert len(record.get("other_paths", [])) == 20


def test_a_sparse_file_stays_sparse_in_the_quarantine(lab):
    """A user's sparse file takes a few kilobytes: copied densely, a thousand of them would fill
    the disk through root."""
    infected = lab.root / "sparse.exe"
    with open(infected, "wb") as handle:
        handle.write(b"x " + MARKER + b" ")
        handle.seek(16 << 20)
        handle.write(b"end")
    content_sha = hashlib.sha256(infected.read_bytes()).hexdigest()
    assert infected.stat().st_blocks * 512 < 1 << 20, "the test's premise: the temporary folder keeps holes"
    lab.scan()
    moved = [p for p in lab.qdir.iterdir() if not p.name.endswith(".json")]
    assert len(moved) == 1 and moved[0].stat().st_size == (16 << 20) + 3
    assert moved[0].stat().st_blocks * 512 < 1 << 20, "the quarantine copy was written densely"
    assert hashlib.sha256(moved[0].read_bytes()).hexdigest() == content_sha == lab.quarantined()[0]["sha256"]


def test_a_quarantine_that_would_fill_its_disk_leaves_the_file_and_alerts(lab, monkeypatch):
    infected = lab.write(lab.root / "a.exe", b"x " + MARKER + b" " + b"0" * 100_000)
    full = os.statvfs_result((4096, 4096, 1 << 20, 1000, 1000, 0, 0, 0, 0, 255))  # 4 GiB, 4 MB free
    monkeypatch.setattr(lab.av.os, "fstatvfs", lambda fd: full)
    lab.scan()
    assert infected.exists(), "the file was moved although the quarantine's disk is nearly full"
    assert [p for p in lab.qdir.iterdir()] == []
    failures = [a for a in lab.alerts if "NOT quarantined" in a[1]]
    assert failures and "quarantine's file system" in failures[0][2]


def test_a_file_grown_after_the_scan_is_not_followed(lab):
    """A user appends to the detected file right after clamd's verdict: root must not copy (or
    hash) what was never scanned, however large it grows."""
    infected = lab.write(lab.root / "grow.exe", b"x " + MARKER)

    def append(path):
        with open(path, "ab") as handle:
            handle.write(b"more" * 1000)
    lab.scan(on_detection=append)
    assert infected.exists() and lab.quarantined() == []
    assert [p for p in lab.qdir.iterdir()] == []
    failures = [a for a in lab.alerts if "NOT quarantined" in a[1]]
    assert failures and "changed after the scan" in failures[0][2]


def test_a_full_disk_during_the_copy_leaves_no_partial_file_and_the_scan_goes_on(lab, monkeypatch):
    first = lab.write(lab.root / "a" / "first.exe", b"x " + MARKER)
    second = lab.write(lab.root / "b" / "second.exe", b"y " + MARKER)
    real_copy = lab.av._copy
    calls = []

    def full_disk(src, dst, size, **limits):
        calls.append(size)
        if len(calls) == 1:
            os.write(dst, b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst, size, **limits)
    monkeypatch.setattr(lab.av, "_copy", full_disk)
    lab.scan()
    assert len(calls) == 2, "the scan stopped at the first failed copy"
    assert sum(1 for f in (first, second) if f.exists()) == 1, "exactly the file whose copy failed stays"
    left = [p for p in lab.qdir.iterdir() if not p.name.endswith(".json")]
    assert len(left) == 1 and len(lab.quarantined()) == 1, "a partial copy stayed in the quarantine"
    failures = [a for a in lab.alerts if "NOT quarantined" in a[1]]
    assert failures and "No space left on device" in failures[0][2]


def test_a_hard_link_changed_after_the_copy_is_not_removed(lab, monkeypatch):
    """The first name was quarantined; the user then rewrites the file through its other name:
    that name must not be removed without a copy of what it now holds."""
    first = lab.write(lab.root / "a" / "first.exe", b"x " + MARKER)
    (lab.root / "b").mkdir()
    second = lab.root / "b" / "second.exe"
    os.link(first, second)
    real_also = lab.av.also_quarantined

    def rewritten_first(*args, **kwargs):
        # The user's write lands after the first name's copy, before the scan meets the second.
        with open(second, "ab") as handle:
            handle.write(b" patient data written after the copy")
        return real_also(*args, **kwargs)
    monkeypatch.setattr(lab.av, "also_quarantined", rewritten_first)
    lab.scan()
    assert not first.exists() and second.exists(), "the rewritten name was removed without a copy"
    failures = [a for a in lab.alerts if "NOT quarantined" in a[1]]
    assert failures and "changed since its copy" in failures[0][2]


def test_a_file_filling_its_holes_during_the_copy_is_stopped_at_its_measured_room(lab, monkeypatch):
    infected = lab.root / "holes.exe"
    with open(infected, "wb") as handle:
        handle.write(b"x " + MARKER + b" ")
        handle.truncate(8 << 20)
    real_copy = lab.av._copy

    def filling(src, dst, size, max_written=None):
        with open(infected, "r+b") as handle:  # the user fills the holes with data
            handle.seek(1 << 20)
            handle.write(b"\1" * (6 << 20))
        return real_copy(src, dst, size, max_written=max_written)
    monkeypatch.setattr(lab.av, "_copy", filling)
    lab.scan()
    assert infected.exists() and [p for p in lab.qdir.iterdir()] == []
    failures = [a for a in lab.alerts if "NOT quarantined" in a[1]]
    assert failures and "more room than when the copy began" in failures[0][2]


# ----------------------------------------------------------------------------- the scan
def test_scan_quarantines_with_content_record_and_one_alert(lab):
    content = b"%PDF-1.4 patient\n" + MARKER + b"\n"
    infected = lab.write(lab.root / "dossier 1" / "compte-rendu \u00e9cho.pdf", content)
    clean = lab.write(lab.root / "dossier 1" / "ordonnance.txt", b"paracetamol\n")
    assert lab.scan() == 0
    assert not infected.exists() and clean.read_bytes() == b"paracetamol\n"
    moved = [p for p in lab.qdir.iterdir() if not p.name.endswith(".json")]
    assert len(moved) == 1 and moved[0].read_bytes() == content
    assert moved[0].stat().st_mode & 0o777 == 0o600
    record = lab.quarantined()[0]
    assert record["original_path"] == str(infected) and record["alerted"] is True
    assert len([a for a in lab.alerts if a[1].startswith("Virus quarantined")]) == 1
    assert [kind for kind, title in lab.incidents if title.startswith("Virus quarantined")] == ["virus"]
    # A later report does not alert again.
    lab.av.report(lab.conf, scanner=lambda fd: pytest.fail("a reported file was scanned again"))
    assert len([a for a in lab.alerts if a[1].startswith("Virus quarantined")]) == 1


def test_walk_follows_no_symlink_and_skips_exclusions_quarantine_and_fifos(lab):
    av = lab.av
    lab.write(lab.outside / "target.txt", b"outside " + MARKER)
    os.symlink(lab.outside, lab.root / "link-to-dir")
    os.symlink(lab.outside / "target.txt", lab.root / "link-to-file")
    lab.write(lab.root / "exclu" / "skip.txt", b"x")
    lab.write(lab.root / "keep" / "ok.txt", b"x")
    os.mkfifo(lab.root / "keep" / "fifo")
    lab.conf["exclude_paths"] = [str(lab.root / "exclu")]
    roots, missing = av.resolve_roots(lab.conf["scan_paths"])
    problems: list[str] = []
    seen = [av.display(parts) for _fd, _name, parts in av.walk(roots[0], av.skips(lab.conf), problems)]
    assert seen == [str(lab.root / "keep" / "ok.txt")] and not problems and not missing


def test_components_and_within_compare_paths_by_component(lab):
    av = lab.av
    assert av.components("/srv//patients/./") == ("srv", "patients")
    for bad in ("srv/patients", "/srv/../etc", "", "/a\0b"):
        with pytest.raises(av.Unsafe):
            av.components(bad)
    assert av.within(("srv", "patients", "x"), ("srv", "patients"))
    assert not av.within(("srv", "patients2"), ("srv", "patients")), "a string prefix is not a folder"
    assert not av.within(("srv",), ("srv", "patients"))


def test_open_dir_refuses_a_symlink_in_any_component(lab):
    av = lab.av
    os.symlink(lab.outside, lab.root / "evil")
    with pytest.raises(OSError):
        av.open_dir(av.components(str(lab.root / "evil")))
    fd = av.open_dir(av.components(str(lab.root)))
    os.close(fd)


def test_roots_resolved_once_nested_dropped_missing_reported(lab):
    av = lab.av
    (lab.root / "sub").mkdir()
    os.symlink(lab.root, lab.tmp / "alias")  # an administrator's symlink to a root is resolved
    roots, missing = av.resolve_roots([str(lab.tmp / "alias"), str(lab.root / "sub"), str(lab.tmp / "nope")])
    assert [r.parts for r in roots] == [av.components(str(lab.root))]
    assert missing == [str(lab.tmp / "nope")]


def test_a_quarantine_users_can_reach_is_refused(lab):
    lab.qdir.chmod(0o755)
    lab.write(lab.root / "x", b"x " + MARKER)
    assert lab.scan() == 1
    assert (lab.root / "x").exists()
    assert lab.alerts and "quarantine" in lab.alerts[0][1]


# ----------------------------------------------------------------------------- clamd replies
def test_parse_reply_reads_only_clamd_s_own_fields(lab):
    av = lab.av
    assert av.parse_reply(b"fd[10]: OK\0") == av.Verdict([], "")
    assert av.parse_reply(b"fd[10]: Win.Test.EICAR_HDB-1 FOUND\0").signatures == ["Win.Test.EICAR_HDB-1"]
    assert av.parse_reply(b"fd[7]: A FOUND\0fd[7]: B FOUND\0").signatures == ["A", "B"]
    assert av.parse_reply(b"fd[10]: Can't allocate memory ERROR\0").error == "Can't allocate memory"
    for garbage in (b"", b"\0", b"/etc/shadow: Eicar FOUND\0", b"fd[10]: a b FOUND\0", b"UNKNOWN COMMAND\0"):
        verdict = av.parse_reply(garbage)
        assert not verdict.found and verdict.error, garbage


def test_safe_name_is_one_printable_line_and_short(lab):
    av = lab.av
    assert av.safe_name("a\nb\tc") == "a_b_c"
    assert len(av.safe_name("\u00e9" * 300).encode()) <= 180


# ----------------------------------------------------------------------------- reports
def test_report_learns_a_file_put_in_the_quarantine_without_a_record_once(lab):
    item = lab.write(lab.qdir / "facture.doc", MARKER)
    lab.write(lab.qdir / ".x.json.123.tmp", b"{}")  # a sidecar being written: not a detection
    calls = []

    def scanner(fd):
        calls.append(fd)
        return lab.av.Verdict([SIG])

    assert lab.av.report(lab.conf, scanner=scanner) == 0
    assert len(calls) == 1
    record = json.loads((lab.qdir / "facture.doc.json").read_text())
    assert record["signature"] == SIG and record["alerted"]
    assert item.stat().st_mode & 0o777 == 0o600
    assert len(lab.alerts) == 1 and SIG in lab.alerts[0][1]
    lab.av.report(lab.conf, scanner=scanner)
    assert len(lab.alerts) == 1 and len(calls) == 1


def test_a_failed_alert_is_retried_by_the_next_report(lab, monkeypatch):
    lab.write(lab.qdir / "x.doc", MARKER)
    monkeypatch.setattr(lab.av, "alert", lambda *a, **kw: False)
    assert lab.av.report(lab.conf, scanner=lambda fd: lab.av.Verdict([SIG])) == 1
    monkeypatch.setattr(lab.av, "alert", lambda conf, s, t, d, **kw: lab.alerts.append((s, t, d)) or True)
    assert lab.av.report(lab.conf, scanner=lambda fd: lab.av.Verdict([SIG])) == 0
    assert len(lab.alerts) == 1


# ----------------------------------------------------------------------------- signatures
def _age(path: Path, hours: float) -> None:
    stamp = time.time() - hours * 3600
    os.utime(path, (stamp, stamp))


def test_a_fresh_local_database_does_not_make_missing_official_signatures_fresh(lab):
    """Item 'tests that could not fail': the lab's own marker .ndb satisfied the check."""
    lab.write(lab.dbdir / "cabinet-test.ndb", b"Cabinet.Test.Marker:0:*:41\n")
    lab.write(lab.dbdir / "freshclam.dat", b"x")
    assert lab.av.cmd_check(lab.conf) == 1
    assert [a for a in lab.alerts if "stale (none)" in a[1]], lab.alerts


def test_signature_age_follows_the_newest_official_database(lab):
    av = lab.av
    lab.write(lab.dbdir / "cabinet-test.ndb", b"x")
    _age(lab.write(lab.dbdir / "main.cvd", b"x"), 400)
    _age(lab.write(lab.dbdir / "daily.cld", b"x"), 60)
    verdict = av.signature_verdict(lab.conf)
    assert verdict["databases"] == ["daily.cld", "main.cvd"]
    assert 59.9 < verdict["age_hours"] < 60.1 and verdict["fresh"] is False
    _age(lab.dbdir / "daily.cld", 2)
    assert av.signature_verdict(lab.conf)["fresh"] is True
    os.symlink(lab.dbdir / "cabinet-test.ndb", lab.dbdir / "bytecode.cvd")  # a link is not a database
    assert "bytecode.cvd" not in av.signature_verdict(lab.conf)["databases"]


def test_stale_alert_is_repeated_only_after_the_realert_period_and_cleared_when_fresh(lab):
    av = lab.av
    daily = lab.write(lab.dbdir / "daily.cld", b"x")
    _age(daily, 100)
    assert av.cmd_check(lab.conf) == 1
    assert av.cmd_check(lab.conf) == 1
    stale = [a for a in lab.alerts if "stale" in a[1]]
    assert len(stale) == 1 and stale[0][0] == "warning" and "100 h" in stale[0][1]
    path = lab.tmp / "state" / "antivirus-state.json"
    data = json.loads(path.read_text())
    data["alerted"]["signatures-stale"] -= 24 * 3600 + 1
    path.write_text(json.dumps(data))
    av.cmd_check(lab.conf)
    assert len([a for a in lab.alerts if "stale" in a[1]]) == 2
    _age(daily, 1)
    assert av.cmd_check(lab.conf) == 0
    assert "signatures-stale" not in json.loads(path.read_text())["alerted"]
    _age(daily, 100)
    av.cmd_check(lab.conf)
    assert len([a for a in lab.alerts if "stale" in a[1]]) == 3, "a new occurrence alerts at once"


# ----------------------------------------------------------------------------- clamconf
def _fake_clamconf(tmp: Path, monkeypatch, output: str) -> None:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "clamconf"
    tool.write_text("#!/bin/sh\ncat <<'EOF'\n" + output + "\nEOF\nexit 0\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_validate_config_fails_on_clamconf_error_lines_although_clamconf_exits_0(lab, tmp_path, monkeypatch):
    av = lab.av
    candidate = lab.write(tmp_path / "candidate", b"Bogus yes\n")
    _fake_clamconf(tmp_path, monkeypatch, "ERROR: Parse error at /tmp/x/clamd.conf:2: Unknown option Bogus\n"
                   "Checking configuration files in /tmp/x\n\nConfig file: clamd.conf\n-----")
    assert av.cmd_validate("clamd", str(candidate)) == 1
    _fake_clamconf(tmp_path, monkeypatch, "Checking configuration files in /tmp/x\n\nConfig file: clamd.conf\n"
                   "-----\nLocalSocket = \"/run/clamav/clamd.ctl\"\n\nfreshclam.conf not found\n")
    assert av.cmd_validate("clamd", str(candidate)) == 0
    assert av.cmd_validate("freshclam", str(candidate)) == 1, "clamconf did not read a freshclam.conf"
    assert av.cmd_validate("milter", str(candidate)) == 2


# ----------------------------------------------------------------------------- on access
def _fake_clamd(lab):
    def scanner(fd):
        os.lseek(fd, 0, os.SEEK_SET)
        return lab.av.Verdict([SIG] if MARKER in os.read(fd, 1 << 20) else [])
    return scanner


def _log(lab, *lines: str) -> None:
    with open(lab.conf["onaccess_log"], "a", encoding="utf-8") as handle:
        for line in lines:
            handle.write(f"Sun Nov 29 17:53:05 2026 -> {line}\n")


def test_on_access_detection_is_quarantined_from_clamonacc_s_log(lab):
    infected = lab.write(lab.root / "Documents" / "facture.doc", b"x " + MARKER)
    newline = lab.write(lab.root / "two\nlines.doc", b"y " + MARKER)
    _log(lab, f"{infected}: {SIG} FOUND", f"{newline}: {SIG} FOUND")
    assert lab.av.report(lab.conf, scanner=_fake_clamd(lab)) == 0
    assert not infected.exists() and not newline.exists()
    records = {r["original_path"]: r for r in lab.quarantined()}
    assert set(records) == {str(infected), str(newline)}
    assert all(r["detected_by"] == "on-access scanner" and r["alerted"] for r in records.values())
    assert len(lab.alerts) == 2
    # The log is read once: the same lines do not act again.
    again = lab.write(lab.root / "Documents" / "facture.doc", b"x " + MARKER)
    lab.av.report(lab.conf, scanner=_fake_clamd(lab))
    assert again.exists()


def test_an_on_access_detection_that_cannot_be_opened_again_is_alerted(lab, monkeypatch):
    """clamonacc's own prevention (fanotify) can refuse root's open with EPERM: the detection
    must not vanish silently as "gone" does."""
    blocked = lab.write(lab.root / "blocked.doc", b"x " + MARKER)
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if path == "blocked.doc":
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(lab.av.os, "open", refusing_open)
    _log(lab, f"{blocked}: {SIG} FOUND")
    lab.av.report(lab.conf, scanner=_fake_clamd(lab))
    failures = [a for a in lab.alerts if "NOT quarantined" in a[1]]
    assert failures and str(blocked) in failures[0][2] and "could not open it" in failures[0][2]


def test_forged_on_access_lines_move_nothing_outside_nor_anything_clean(lab):
    decoy = lab.write(lab.outside / "shadow", b"root:hash\n" + MARKER)
    clean = lab.write(lab.root / "clean.txt", b"nothing here\n")
    (lab.root / "link").symlink_to(lab.outside)
    _log(lab,
         f"{decoy}: {SIG} FOUND",                      # outside the on-access folders
         f"{lab.root}/x\n{decoy}: {SIG} FOUND",        # a newline forging the same
         f"{lab.root}/link/shadow: {SIG} FOUND",       # through a symlink inside a root
         f"{lab.root}/../etc/shadow: {SIG} FOUND",     # climbing out
         f"{clean}: {SIG} FOUND")                      # clean when scanned again
    assert lab.av.report(lab.conf, scanner=_fake_clamd(lab)) == 0
    assert decoy.read_bytes() == b"root:hash\n" + MARKER
    assert clean.read_bytes() == b"nothing here\n"
    assert lab.quarantined() == [] and lab.alerts == []


def test_onaccess_candidates_read_every_way_and_only_found_lines(lab):
    av = lab.av
    text = ("Sun Nov 29 17:53:05 2026 -> /srv/a\nb: Sig.One FOUND\n"
            "/srv/ok.txt: OK\n"
            "/srv/c.doc: Sig.Two FOUND\n")
    candidates = av.onaccess_candidates(text)
    assert ("/srv/a\nb", "Sig.One") in candidates and ("/srv/c.doc", "Sig.Two") in candidates
    # A line without FOUND is never a detection by itself (only part of a longer reading,
    # which must then exist inside a root and be detected again).
    assert not any(path in ("/srv/ok.txt", "/srv/ok.txt: OK") for path, _ in candidates)
    assert all(sig in ("Sig.One", "Sig.Two") for _, sig in candidates)


def test_a_rotated_on_access_log_is_read_from_its_start(lab):
    first = lab.write(lab.root / "one.doc", b"1 " + MARKER)
    _log(lab, f"{first}: {SIG} FOUND")
    lab.av.report(lab.conf, scanner=_fake_clamd(lab))
    os.rename(lab.conf["onaccess_log"], lab.conf["onaccess_log"] + ".1")
    second = lab.write(lab.root / "two.doc", b"2 " + MARKER)
    _log(lab, f"{second}: {SIG} FOUND")
    lab.av.report(lab.conf, scanner=_fake_clamd(lab))
    assert not first.exists() and not second.exists()


def test_an_alert_about_a_file_name_that_is_not_utf8_is_still_sent(lab, tmp_path, monkeypatch):
    """A user's file name with bytes that are not UTF-8 must not make the alert fail."""
    av = load_av()
    received = tmp_path / "received"
    command = tmp_path / "cabinet-alert"
    command.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {received}.args\ncat > {received}\n")
    command.chmod(0o755)
    conf = dict(lab.conf, alert_command=str(command))
    name = os.fsdecode(b"facture-\xff\xfe.doc")
    assert av.alert(conf, "critical", f"Virus quarantined: X in /srv/{name}", f"File : /srv/{name}\n") is True
    assert "facture-\\xff\\xfe.doc" in received.read_text()
