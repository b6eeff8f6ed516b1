"""cabinet-hardware (role hardware_health): what it reads and what it mails, without containers.

/proc/mdstat and /proc/self/mountinfo are parsed from text recorded on real machines; the
kernel here has no software RAID, so a degraded mirror's mdstat is fed as text. The alert
command is a fake that records its calls; the state lives in a temporary folder.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "hardware_health" / "files" / "usr" / "local" / "sbin" / "cabinet-hardware"
sys.path.insert(0, str(ROOT / "roles" / "alerting" / "files" / "usr" / "local" / "lib" / "cabinet"))

hw = load_script(SCRIPT)

LIMITS = {"space_warning_percent": 85, "space_critical_percent": 95, "space_warning_free_gib": 20.0,
          "space_critical_free_gib": 5.0, "inode_warning_percent": 85, "inode_critical_percent": 95}

HEALTHY = """Personalities : [raid1] [linear] [multipath] [raid0] [raid6] [raid5] [raid4] [raid10]
md0 : active raid1 sdb1[1] sda1[0]
      976630464 blocks super 1.2 [2/2] [UU]
      bitmap: 0/8 pages [0KB], 65536KB chunk

unused devices: <none>
"""
DEGRADED = """Personalities : [raid1]
md0 : active raid1 sdb1[1](F) sda1[0]
      976630464 blocks super 1.2 [2/1] [U_]
      bitmap: 2/8 pages [8KB], 65536KB chunk

md1 : active raid1 sdd1[2] sdc1[0]
      488253440 blocks super 1.2 [2/1] [U_]
      [==>..................]  recovery = 12.6% (61592064/488253440) finish=38.4min speed=185142K/sec

unused devices: <none>
"""


DEGRADED_MD0 = """Personalities : [raid1]
md0 : active raid1 sdb1[1](F) sda1[0]
      976630464 blocks super 1.2 [2/1] [U_]

unused devices: <none>
"""


class Alerts:
    """A stand-in for cabinet_common.alert: records (severity, title, details); queued unless told."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.queue = True

    def __call__(self, practice, severity, title, details, **_kwargs) -> bool:
        assert practice == "hardware_health"
        self.sent.append((severity, title, details))
        return self.queue

    def titles(self) -> list[str]:
        return [title for _, title, _ in self.sent]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def state_dir(tmp_path, monkeypatch):
    folder = tmp_path / "state"
    monkeypatch.setattr(hw, "STATE_DIR", str(folder))
    return folder


def make_check(state_dir, clock, alerts, today=dt.date(2027, 1, 1), **settings):
    state = hw.cc.State(state_dir / "alerts.json", 24 * 3600, clock=clock)
    base = {"limits": LIMITS, "realert_hours": 24, "notice_days": 60, "contract_realert_days": 7}
    return hw.Check({**base, **settings}, state, today=today, alert=alerts, log=lambda _m: None)


# ----------------------------------------------------------------------------- parsing
def test_mdstat_healthy_and_degraded_mirrors():
    (healthy,) = hw.mdstat(HEALTHY)
    assert healthy["name"] == "md0" and healthy["level"] == "raid1" and not healthy["degraded"]
    assert (healthy["disks"], healthy["working"]) == (2, 2)
    md0, md1 = hw.mdstat(DEGRADED)
    assert md0["degraded"] and md0["failed"] == ["sdb1"] and md0["working"] == 1
    assert md1["degraded"] and md1["failed"] == [] and md1["recovering"] == "recovery 12.6%"


INACTIVE = """Personalities : [raid1]
md0 : inactive sda1[0](S)
      976630464 blocks super 1.2

md127 : inactive sdc[1](S) sdb[0](S)
      5288 blocks super external:imsm

md126 : active raid1 sdb[1] sdc[0]
      976759808 blocks super external:/md127/0 [2/2] [UU]

unused devices: <none>
"""


def test_an_inactive_array_is_not_healthy_but_a_container_is_not_judged():
    md0, md127, md126 = hw.mdstat(INACTIVE)
    assert md0["degraded"], "an array that is not running serves no data"
    assert md127["container"] and not md127["degraded"]
    assert not md126["degraded"]
    # An Intel RST volume assembled but not started: no level, its metadata points to the container.
    (member,) = hw.mdstat("md126 : inactive sda[0]\n      976759808 blocks super external:-md127/0\n\nunused devices: <none>\n")
    assert not member["container"] and member["degraded"]


def test_space_level_speaks_for_small_and_large_disks():
    assert hw.space_level(90, 3.0, LIMITS) == "warning"       # a 30 GiB disk at 90 %
    assert hw.space_level(97, 1.0, LIMITS) == "critical"
    assert hw.space_level(90, 400.0, LIMITS) == "ok"          # 4 TB at 90 %: 400 GiB left
    assert hw.space_level(97, 120.0, LIMITS) == "ok"
    assert hw.space_level(97, 12.0, LIMITS) == "warning"      # past both percentages, under the warning floor only
    assert hw.space_level(50, 1.0, LIMITS) == "ok"            # a tiny disk half full
    assert hw.inode_level(None, LIMITS) == "ok"               # btrfs, vfat: no inode table
    assert hw.inode_level(96, LIMITS) == "critical"


def test_mounts_keeps_local_folders_once_each(tmp_path):
    data = tmp_path / "données patients"
    data.mkdir()
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("", encoding="utf-8")
    escaped = str(data).replace(" ", "\\040")
    text = "\n".join([
        "21 1 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/x",
        f"30 21 7:3 / {escaped} rw,relatime - ext4 /dev/loop3 rw",
        f"31 21 7:3 /sub {tmp_path} rw,relatime - ext4 /dev/loop3 rw",      # the same device again
        f"32 21 254:0 /containers/hosts {hosts_file} rw - ext4 /dev/vda rw",  # a file bind-mounted
        "33 21 0:50 / /dev/shm rw - tmpfs shm rw",
        "34 21 0:51 / /mnt/share rw - nfs4 srv:/share rw",
    ])
    found = hw.mounts(text, ["ext4", "overlay"], [])
    assert [(e["device"], e["mount"]) for e in found] == [("0:40", "/"), ("7:3", str(tmp_path))]
    assert str(data) in found[1]["mounts"]
    assert hw.mounts(text, ["ext4", "overlay"], [str(tmp_path)]) == [found[0]]


def test_container_overlays_are_left_out_but_a_container_root_is_not(tmp_path):
    text = "\n".join([
        "21 1 0:40 / / rw - overlay overlay rw",
        f"40 21 0:90 / {tmp_path} rw - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X",
    ])
    assert [e["mount"] for e in hw.mounts(text, ["overlay"], [])] == ["/"]


def test_a_trailing_slash_leaves_out_only_what_is_mounted_below(tmp_path):
    (tmp_path / "x").mkdir()
    text = "\n".join([f"30 1 8:1 / {tmp_path} rw - ext4 /dev/sdb1 rw", f"31 30 8:2 / {tmp_path}/x rw - ext4 /dev/sdc1 rw"])
    assert [e["mount"] for e in hw.mounts(text, ["ext4"], [f"{tmp_path}/"])] == [str(tmp_path)]
    assert hw.mounts(text, ["ext4"], [str(tmp_path)]) == []


def test_key_paths_are_placed_by_the_mount_table_without_touching_them():
    """No stat: a key path on a dead network share, or a symlink a user planted, must neither
    hang the check nor send it elsewhere."""
    points = hw.mount_points("\n".join([
        "21 1 254:1 / / rw - ext4 /dev/vda1 rw",
        "22 21 254:2 / /srv rw - ext4 /dev/vda2 rw",
        "23 22 0:60 / /srv/nas rw - nfs4 nas:/x rw",
        "24 21 254:3 / /srv2 rw - ext4 /dev/vda3 rw",
    ]))
    assert hw.device_of("/srv/patients", points) == "254:2"
    assert hw.device_of("/srv/nas/dossiers", points) == "0:60"
    assert hw.device_of("/srv2/x", points) == "254:3"
    assert hw.device_of("/var", points) == "254:1"
    assert hw.device_of("/srv/../var", points) == "254:1"
    entry = {"device": "254:2"}
    assert hw.key_paths_on(entry, [{"path": "/srv/patients", "label": "dossiers"}, {"path": "/var"}], points) == [
        "/srv/patients (dossiers)"]


def test_smartd_device_identity():
    model, serial = hw.device_identity("WDC WD40EFRX-68N32N0, S/N:WD-WCC7K4XYZ, WWN:5-0014ee-2, FW:82.00A82, 4.00 TB")
    assert (model, serial) == ("WDC WD40EFRX-68N32N0", "WD-WCC7K4XYZ")
    assert hw.device_identity("") == ("", "")


# ----------------------------------------------------------------------------- the check
def test_space_alerts_climb_once_each_and_clear_once(state_dir, monkeypatch):
    clock, alerts = Clock(), Alerts()
    entry = {"device": "7:3", "type": "ext4", "source": "/dev/sdb1", "mounts": ["/srv"], "mount": "/srv"}
    figures = {"used_percent": 50.0, "free_gib": 10.0, "size_gib": 20.0, "inodes_percent": 1.0}
    monkeypatch.setattr(hw, "mounts", lambda *_a: [dict(entry)])
    monkeypatch.setattr(hw, "usage", lambda _p: dict(figures))
    monkeypatch.setattr(hw, "key_paths_on", lambda *_a: ["/srv (données du cabinet)"])

    def run(used: float, free: float) -> list[str]:
        figures.update(used_percent=used, free_gib=free)
        before = len(alerts.sent)
        check = make_check(state_dir, clock, alerts)
        check.space("")
        check.state.save()
        clock.now += 900
        return alerts.titles()[before:]

    assert run(50, 10) == []
    assert run(90, 2) == ["Disk space warning on /srv: 90 % used, 2 GiB free"]
    assert "données du cabinet" in alerts.sent[-1][2]
    assert run(91, 1.9) == []                                    # still warning: not again
    assert run(97, 0.6) == ["Disk space critical on /srv: 97 % used, 0.6 GiB free"]
    assert run(97, 0.6) == []
    assert run(90, 2) == []                                      # back down to warning: already said
    assert run(97, 0.6) == ["Disk space critical on /srv: 97 % used, 0.6 GiB free"]  # up again: at once
    assert run(40, 12) == ["Disk space back to normal on /srv: 40 % used, 12 GiB free"]
    assert run(40, 12) == []
    clock.now += 25 * 3600
    assert run(90, 2) and run(90, 2) == []
    clock.now += 23 * 3600                                       # a day later, still full: again
    assert run(90, 2) == ["Disk space warning on /srv: 90 % used, 2 GiB free"]


def test_a_mount_named_like_a_level_does_not_end_another_s_alert(state_dir, monkeypatch):
    clock, alerts = Clock(), Alerts()
    rows = {"/media/x": 90.0, "/media/x:warning": 10.0}
    monkeypatch.setattr(hw, "mounts", lambda *_a: [{"device": f"7:{i}", "type": "ext4", "source": "s", "mounts": [m], "mount": m}
                                                   for i, m in enumerate(rows)])
    monkeypatch.setattr(hw, "usage", lambda p: {"used_percent": rows[p], "free_gib": 1.0, "size_gib": 8.0, "inodes_percent": 1.0})
    for _ in range(3):
        check = make_check(state_dir, clock, alerts)
        check.space("")
        check.state.save()
        clock.now += 900
    assert alerts.titles() == ["Disk space warning on /media/x: 90.0 % used, 1.0 GiB free"]


def test_one_failing_part_is_alerted_and_the_others_still_run(state_dir, monkeypatch):
    clock, alerts = Clock(), Alerts()
    monkeypatch.setattr(hw, "read_text", lambda path: DEGRADED if path == hw.MDSTAT else "")
    monkeypatch.setattr(hw, "edac_counts", lambda: None)
    machine = {"contract_end": "2027-01-31 "}   # would not parse: the contract part fails
    for _ in range(2):
        check = make_check(state_dir, clock, alerts, machine=machine)
        check.run_parts()
        clock.now += 900
    assert alerts.titles()[:2] == ["RAID /dev/md0 degraded: 1 of 2 disks working; failed: sdb1",
                                   "RAID /dev/md1 degraded: 1 of 2 disks working"]
    assert alerts.titles()[2] == "The hardware check failed on its contract part"
    assert len(alerts.sent) == 3, "the second check mailed again: the state was not saved"
    assert check.status["raid"]["arrays"] and "contract" in check.status["errors"][0]


def test_a_part_failing_every_other_run_is_not_mailed_every_other_run(state_dir, monkeypatch):
    clock, alerts = Clock(), Alerts()
    monkeypatch.setattr(hw, "read_text", lambda _p: "")
    monkeypatch.setattr(hw, "edac_counts", lambda: None)
    for run in range(8):
        machine = {"contract_end": "2027-01-31 " if run % 2 == 0 else "2027-01-31"}
        make_check(state_dir, clock, alerts, machine=machine).run_parts()
        clock.now += 900
    assert alerts.titles().count("The hardware check failed on its contract part") == 1


def test_space_runs_last_so_a_blocked_disk_does_not_stop_the_rest(state_dir, monkeypatch):
    order = []
    check = make_check(state_dir, Clock(), Alerts())
    for name in ("raid", "memory", "contract", "space"):
        monkeypatch.setattr(check, name, lambda *_a, name=name: order.append(name))
    check.run_parts()
    assert order[-1] == "space"


def test_an_uncorrectable_memory_error_is_not_lost_when_the_relay_is_down(tmp_path, state_dir):
    clock, alerts = Clock(), Alerts()
    check = make_check(state_dir, clock, alerts)
    check.memory({"corrected": 0, "uncorrected": 0, "controllers": 1})
    alerts.queue = False
    check.memory({"corrected": 0, "uncorrected": 2, "controllers": 1})
    alerts.queue = True
    check.memory({"corrected": 0, "uncorrected": 2, "controllers": 1})
    assert [s for s, _, _ in alerts.sent] == ["critical", "critical"]
    check.memory({"corrected": 0, "uncorrected": 2, "controllers": 1})
    assert len(alerts.sent) == 2


def test_an_alert_that_could_not_be_queued_is_tried_again(state_dir, monkeypatch):
    clock, alerts = Clock(), Alerts()
    alerts.queue = False
    monkeypatch.setattr(hw, "mounts", lambda *_a: [{"device": "7:3", "type": "ext4", "source": "s", "mounts": ["/"], "mount": "/"}])
    monkeypatch.setattr(hw, "usage", lambda _p: {"used_percent": 99.0, "free_gib": 0.1, "size_gib": 8.0, "inodes_percent": 1.0})
    monkeypatch.setattr(hw, "key_paths_on", lambda *_a: [])
    check = make_check(state_dir, clock, alerts)
    check.space("")
    assert check.failures == 1
    alerts.queue = True
    again = make_check(state_dir, clock, alerts)
    again.space("")
    assert again.failures == 0 and len(alerts.sent) == 2


def test_a_degraded_mirror_is_mailed_once_a_day_and_its_recovery_once(state_dir):
    clock, alerts = Clock(), Alerts()
    for text in (DEGRADED, DEGRADED):
        check = make_check(state_dir, clock, alerts)
        check.raid(text)
        check.state.save()
        clock.now += 900
    assert alerts.titles() == ["RAID /dev/md0 degraded: 1 of 2 disks working; failed: sdb1",
                               "RAID /dev/md1 degraded: 1 of 2 disks working"]
    assert all(severity == "critical" for severity, _, _ in alerts.sent)
    assert "recovery 12.6%" in alerts.sent[1][2]
    check = make_check(state_dir, clock, alerts)
    check.raid(HEALTHY)
    check.state.save()
    assert alerts.titles()[2:] == ["RAID /dev/md0 healthy again (raid1, 2 disks)"]
    check = make_check(state_dir, clock, alerts)
    check.raid(None)
    assert check.status["raid"] == {"applicable": False, "reason": "the kernel has no software RAID (no /proc/mdstat)"}


def test_contract_and_warranty_dates(state_dir):
    clock, alerts = Clock(), Alerts()
    machine = {"contract_end": "2027-01-31", "warranty_end": "2026-12-01", "contract_provider": "MSP",
               "contract_reference": "M-42", "vendor": "Dell", "purchase_date": "2022-01-01"}
    check = make_check(state_dir, clock, alerts, machine=machine)
    check.contract()
    check.state.save()
    assert alerts.sent == [
        ("warning", "Maintenance contract (MSP, M-42) ends in 30 days (2027-01-31)", alerts.sent[0][2]),
        ("critical", "Warranty (Dell) ended on 2026-12-01", alerts.sent[1][2]),
    ]
    assert check.status["contract"]["contract_end"] == {"date": "2027-01-31", "days_left": 30}
    assert check.status["contract"]["age_years"] == 5.0
    clock.now += 3 * 86400                                        # within the week: not again
    make_check(state_dir, clock, alerts, machine=machine).contract()
    assert len(alerts.sent) == 2
    clock.now += 5 * 86400
    check = make_check(state_dir, clock, alerts, today=dt.date(2027, 1, 9), machine=machine)
    check.contract()
    assert len(alerts.sent) == 4
    far = {**machine, "contract_end": "2030-01-01", "warranty_end": ""}
    check = make_check(state_dir, clock, alerts, machine=far)
    check.contract()
    assert check.status["contract"]["warranty_end"] is None and len(alerts.sent) == 4
    assert not [k for k in check.state.alerted if k.startswith("contract:")]


def test_memory_errors_where_the_kernel_counts_them(tmp_path, state_dir):
    clock, alerts = Clock(), Alerts()
    assert hw.edac_counts(str(tmp_path / "none")) is None
    check = make_check(state_dir, clock, alerts)
    check.memory(None)
    assert check.status["memory"]["reported"] is False and "EDAC" in check.status["memory"]["reason"]
    mc = tmp_path / "mc" / "mc0"
    mc.mkdir(parents=True)
    (mc / "ce_count").write_text("0\n", encoding="ascii")
    (mc / "ue_count").write_text("0\n", encoding="ascii")
    assert hw.edac_counts(str(tmp_path / "mc")) == {"corrected": 0, "uncorrected": 0, "controllers": 1}
    check.memory(hw.edac_counts(str(tmp_path / "mc")))
    assert alerts.sent == []
    (mc / "ce_count").write_text("3\n", encoding="ascii")
    (mc / "ue_count").write_text("1\n", encoding="ascii")
    check.memory(hw.edac_counts(str(tmp_path / "mc")))
    assert [s for s, _, _ in alerts.sent] == ["critical", "warning"]


# ----------------------------------------------------------------------------- hooks
def smartd_env(kind: str, serial: str = "WD-1", message: str = "Device: /dev/sda [SAT], 8 Currently unreadable (pending) sectors"):
    return {"SMARTD_DEVICE": "/dev/sda", "SMARTD_DEVICESTRING": "/dev/sda", "SMARTD_DEVICETYPE": "sat",
            "SMARTD_FAILTYPE": kind, "SMARTD_MESSAGE": message,
            "SMARTD_DEVICEINFO": f"WDC WD20EFRX-68EUZN0, S/N:{serial}, FW:82.00A82, 2.00 TB"}


def test_smartd_event_once_per_device_and_kind(state_dir, capsys):
    clock, alerts = Clock(), Alerts()
    settings = {"realert_hours": 24}
    assert hw.smartd_event(smartd_env("CurrentPendingSector"), settings, alert=alerts, clock=clock) == 0
    assert hw.smartd_event(smartd_env("CurrentPendingSector"), settings, alert=alerts, clock=clock) == 0
    assert "repeat" in capsys.readouterr().out
    assert hw.smartd_event(smartd_env("CurrentPendingSector", serial="WD-2"), settings, alert=alerts, clock=clock) == 0
    assert hw.smartd_event(smartd_env("Temperature", message="Temperature 56 Celsius reached critical limit"), settings,
                           alert=alerts, clock=clock) == 0
    assert [(s, t) for s, t, _ in alerts.sent] == [
        ("critical", "Disk /dev/sda (WDC WD20EFRX-68EUZN0, S/N WD-1): sectors pending reallocation (unreadable data)"),
        ("critical", "Disk /dev/sda (WDC WD20EFRX-68EUZN0, S/N WD-2): sectors pending reallocation (unreadable data)"),
        ("warning", "Disk /dev/sda (WDC WD20EFRX-68EUZN0, S/N WD-1): temperature out of range"),
    ]
    clock.now += 23 * 3600    # smartd's daily repeat, a little early: mailed
    assert hw.smartd_event(smartd_env("CurrentPendingSector"), settings, alert=alerts, clock=clock) == 0
    assert len(alerts.sent) == 4
    grown = smartd_env("Usage", message="Device: /dev/sda [SAT], SMART Usage Attribute: 5 Reallocated_Sector_Ct changed from 100 to 98")
    hw.smartd_event(grown, settings, alert=alerts, clock=clock)
    assert alerts.sent[-1][0] == "critical"
    # smartd -M test sends EmailTest each time it is asked: never held back.
    for _ in range(2):
        hw.smartd_event(smartd_env("EmailTest"), settings, alert=alerts, clock=clock)
    assert [s for s, _, _ in alerts.sent[-2:]] == ["info", "info"]


def test_smartd_event_not_queued_is_not_marked(state_dir):
    clock, alerts = Clock(), Alerts()
    alerts.queue = False
    assert hw.smartd_event(smartd_env("Health"), {}, alert=alerts, clock=clock) == 1
    alerts.queue = True
    assert hw.smartd_event(smartd_env("Health"), {}, alert=alerts, clock=clock) == 0
    assert len(alerts.sent) == 2


def test_mdadm_events_fail_reminder_and_recovery(state_dir, capsys):
    clock, alerts = Clock(), Alerts()
    detail = lambda _a: "mdadm --detail output\n"  # noqa: E731
    def event(*args):
        return hw.mdadm_event(*args, {"realert_hours": 24}, alert=alerts, clock=clock, detail=detail, sysfs=lambda *_a: None)
    assert event("Fail", "/dev/md0", "/dev/sdb1") == 0
    assert event("DegradedArray", "/dev/md0", "") == 0          # the daily reminder: already said
    assert event("Fail", "/dev/md0", "/dev/sdc1") == 0          # a second disk: said at once
    assert event("RebuildFinished", "/dev/md0", "") == 0
    assert event("DegradedArray", "/dev/md0", "") == 0          # degraded again: said at once
    assert [(s, t) for s, t, _ in alerts.sent] == [
        ("critical", "RAID /dev/md0: disk /dev/sdb1 failed"),
        ("critical", "RAID /dev/md0: disk /dev/sdc1 failed"),
        ("info", "RAID /dev/md0 rebuilt, redundancy is back"),
        ("critical", "RAID /dev/md0 degraded"),
    ]
    assert "mdadm --detail output" in alerts.sent[0][2]


def test_scrubs_and_progress_are_not_mailed_and_a_still_degraded_array_is_not_called_rebuilt(state_dir, capsys):
    clock, alerts = Clock(), Alerts()
    degraded = {"value": "0"}
    def event(*args):
        return hw.mdadm_event(*args, {}, alert=alerts, clock=clock, detail=lambda _a: "",
                              sysfs=lambda _n, _f: degraded["value"])
    # Debian's monthly checkarray on a healthy array: started, progress, finished.
    for name in ("RebuildStarted", "Rebuild20", "Rebuild80", "RebuildFinished"):
        assert event(name, "/dev/md0", "") == 0
    assert alerts.sent == []
    event("Fail", "/dev/md0", "/dev/sdb1")
    degraded["value"] = "1"        # the rebuild onto a spare ended, another member still missing
    event("RebuildFinished", "/dev/md0", "")
    assert alerts.titles() == ["RAID /dev/md0: disk /dev/sdb1 failed"]
    degraded["value"] = "0"
    event("RebuildFinished", "/dev/md0", "")
    assert alerts.titles()[-1] == "RAID /dev/md0 rebuilt, redundancy is back"


def test_a_scrub_that_finds_mismatches_is_mailed_once_a_month(state_dir):
    clock, alerts = Clock(), Alerts()
    def finished(component):
        return hw.mdadm_event("RebuildFinished", "/dev/md0", component, {}, alert=alerts, clock=clock,
                              detail=lambda _a: "", sysfs=lambda *_a: "0")
    finished(" mismatches found: 0 (on raid level 6)")
    assert alerts.sent == []
    finished(" mismatches found: 4096 (on raid level 6)")
    finished(" mismatches found: 4096 (on raid level 6)")
    assert alerts.titles() == ["RAID /dev/md0: the scrub found 4096 mismatched blocks"]
    clock.now += 26 * 86400
    finished(" mismatches found: 4096 (on raid level 6)")
    assert len(alerts.sent) == 2


def test_a_replaced_disk_leaves_no_key_that_would_call_the_next_scrub_a_rebuild(state_dir):
    """The relay was down when the rebuild ended: the check later sees the array healthy, and
    the next monthly scrub's RebuildFinished must not say "redundancy is back"."""
    clock, alerts = Clock(), Alerts()
    hw.mdadm_event("Fail", "/dev/md0", "/dev/sdb1", {}, alert=alerts, clock=clock, detail=lambda _a: "", sysfs=lambda *_a: "0")
    check = make_check(state_dir, clock, alerts)
    check.raid(HEALTHY)
    check.state.save()
    before = len(alerts.sent)
    hw.mdadm_event("RebuildFinished", "/dev/md0", "", {}, alert=alerts, clock=clock, detail=lambda _a: "", sysfs=lambda *_a: "0")
    assert len(alerts.sent) == before


def test_mdadm_names_arrays_as_the_kernel_does(tmp_path, state_dir):
    """Debian's mdadm.conf names arrays /dev/md/0, a link to /dev/md0, the name /proc/mdstat uses."""
    (tmp_path / "md0").touch()
    (tmp_path / "md").mkdir()
    os.symlink(tmp_path / "md0", tmp_path / "md" / "0")
    assert hw.array_name(str(tmp_path / "md" / "0")) == "md0"
    assert hw.array_name("/dev/md/host:0") == "host:0"


def test_the_periodic_check_and_the_mdadm_hook_share_one_state(state_dir, monkeypatch):
    """The same degraded mirror reported by mdadm's monitor and by the check is mailed once."""
    clock, alerts = Clock(), Alerts()
    monkeypatch.setattr(hw, "array_name", lambda _a: "md0")   # /dev/md/0 -> md0
    hw.mdadm_event("DegradedArray", "/dev/md/0", "", {}, alert=alerts, clock=clock, detail=lambda _a: "")
    check = make_check(state_dir, clock, alerts)
    check.raid(DEGRADED_MD0)
    assert [t for _, t, _ in alerts.sent] == ["RAID /dev/md/0 degraded"]


def test_state_folder_is_private_and_a_planted_link_is_refused_not_followed(state_dir, tmp_path):
    """The state folder is 0700; one swapped for a symlink (to a folder others can write) is not
    followed, and the hook still raises its alert, without state."""
    hw.mdadm_event("TestMessage", "/dev/md0", "", {}, alert=Alerts(), clock=Clock(), detail=lambda _a: "")
    assert (os.stat(state_dir).st_mode & 0o777) == 0o700
    for name in os.listdir(state_dir):
        os.unlink(state_dir / name)
    os.rmdir(state_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chmod(elsewhere, 0o777)
    os.symlink(elsewhere, state_dir)
    alerts = Alerts()
    assert hw.mdadm_event("Fail", "/dev/md0", "/dev/sdb1", {}, alert=alerts, clock=Clock(), detail=lambda _a: "",
                          sysfs=lambda *_a: None) == 0
    assert hw.smartd_event(smartd_env("Health"), {}, alert=alerts, clock=Clock()) == 0
    assert len(alerts.sent) == 2
    assert os.listdir(elsewhere) == []


def test_settings_that_cannot_be_read_are_alerted_once_a_day(state_dir, monkeypatch):
    alerts = Alerts()
    hw.settings_missing("no such file", alert=alerts)
    hw.settings_missing("no such file", alert=alerts)
    assert alerts.titles() == ["The hardware check cannot read its settings"]


def test_settings_reached_through_a_symlink_are_refused(tmp_path):
    """The settings are root's file: a link planted in their place is not followed."""
    real = tmp_path / "real.json"
    real.write_text('{"limits": {}}', encoding="utf-8")
    link = tmp_path / "hardware_health.json"
    os.symlink(real, link)
    with pytest.raises(hw.BadSettings):
        hw.load_settings(str(link))
    assert hw.load_settings(str(real)) == {"limits": {}}
