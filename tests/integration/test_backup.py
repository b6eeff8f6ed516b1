"""Backups: two encrypted borg copies (local disk, append-only off-site server), checked and restore-tested.

Audits (every inventory): borg, settings and secrets locked down, timers, the pinned host key,
the local disk detached between runs, a recent success in each repository; on the off-site
server, every practice key forced to `borg serve --append-only` on its own repository.

Lab proofs (cabinet_lab hosts with the mail sink): a run writes both repositories and what
comes back is byte-identical (name with spaces and accents, a large file, a database dump);
the practice's key cannot make the off-site server lose archives (the guard catches the
attempt, pruning stops, the roll-back brings every archive back); with the off-site server
down the local copy is still written and an alert sent, and the next run catches up; the
restore test catches a corrupted repository; runs never overlap; stale backups alert.
"""

from __future__ import annotations

import json
import re
import shlex
import time

import pytest

from conftest import (SECRET_ROOTS, assert_secrets_not_exposed, assert_secrets_not_in_ansible_log, connect,
                      not_applicable, role_defaults, run_unit, stamp)

ROLE = "backup"
AUDITED_GROUP = "backup_clients:backup_offsite"
SOURCE = "/srv/cabinet"
ACCENTED = "Compte rendu d'échographie – Mme Dupré.pdf"
LARGE = "imagerie/scanner-thorax.dcm"
DUMP_DIR_DEFAULT = "/var/backups/cabinet-dumps"
LOCK = "/run/cabinet-backup/lock"
SERVER_SETTINGS = "/etc/cabinet/backup-server.json"


# ----------------------------------------------------------------------------- helpers
def is_server(inventory, host) -> bool:
    return host.inventory_name in inventory.group("backup_offsite")


@pytest.fixture(scope="module")
def client(inventory, host):
    if is_server(inventory, host):
        not_applicable("practice-side check; this host is an off-site server")
    return host


@pytest.fixture(scope="module")
def server(inventory, host):
    if not is_server(inventory, host):
        not_applicable("off-site server check; this host is a practice machine")
    return host


@pytest.fixture(scope="module")
def offsite(inventory, client, expect):
    """The off-site server this practice machine backs up to, and its repository name there."""
    if not expect("backup_offsite_enabled"):
        not_applicable("this host has no off-site copy")
    name = expect("backup_offsite_server")
    handle = connect(inventory, name)
    handle.inventory_name = name
    return handle, expect("backup_offsite_repository_name")


def settings(client) -> dict:
    return json.loads(client.check_output("cat /etc/cabinet/backup.json"))


def repo_names(client) -> list[str]:
    return [r["name"] for r in settings(client)["repositories"]]


def archives(client, repo: str) -> list[str]:
    out = client.run(f"cabinet-backup borg {repo} list --short")
    assert out.rc == 0, f"cannot list {repo}: {out.stderr}"
    return out.stdout.split()


def backup_now(client) -> str:
    return run_unit(client, "cabinet-backup.service", timeout=900)


def sha256_tree(handle, root: str) -> dict[str, str]:
    out = handle.check_output(f"cd {shlex.quote(root)} && find . -type f -print0 | sort -z | xargs -0 -r sha256sum")
    sums = {}
    for line in out.splitlines():
        digest, path = line.split("  ", 1)
        sums[path] = digest
    return sums


def restore(client, repo: str, archive: str) -> dict[str, str]:
    target = f"/var/tmp/cabinet-test-restore-{repo}"
    client.check_output(f"rm -rf {target} && mkdir -p {target}")
    out = client.run(f"cd {target} && cabinet-backup borg {repo} extract ::{archive} {SOURCE.lstrip('/')}")
    assert out.rc == 0, f"extract from {repo} failed: {out.stderr}"
    sums = sha256_tree(client, f"{target}{SOURCE}")
    client.run(f"rm -rf {target}")
    return sums


def mail_host(handle) -> str:
    return handle.check_output("postconf -h myhostname")


def wait_alert_naming(mailsink, sender: str, text: str, before: int, *needles: str, timeout: float = 90) -> dict:
    """A new alert mentioning ``text`` whose body names every needle. The mail sink lists a
    Maildir in no particular order, so "the last one" can be an older alert with the same title."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = mailsink.alerts(sender, ROLE, text)
        hits = [m for m in found if all(n in m["body"] for n in needles)]
        if len(found) > before and hits:
            return hits[-1]
        time.sleep(2)
    raise AssertionError(f"no new alert mentioning {text!r} and naming {needles} from {sender} within {timeout:.0f} s")


def server_cmd(server, *args: str):
    return server.run("cabinet-backup-server " + " ".join(shlex.quote(a) for a in args))


@pytest.fixture(scope="module")
def source_data(lab, client):
    """Patient files on the lab host: accented name with spaces, a 64 MiB file, an SQLite base."""
    script = (
        "import os, sqlite3\n"
        f"root = {SOURCE!r}\n"
        f"os.makedirs(os.path.join(root, 'imagerie'), exist_ok=True)\n"
        f"open(os.path.join(root, {ACCENTED!r}), 'wb').write(os.urandom(300000))\n"
        f"open(os.path.join(root, {LARGE!r}), 'wb').write(os.urandom(64 << 20))\n"
        "open(os.path.join(root, 'notes.txt'), 'w').write('Consultation du 3 mars\\n')\n"
        "os.makedirs('/var/lib/cabinet-lab', exist_ok=True)\n"
        "db = sqlite3.connect('/var/lib/cabinet-lab/agenda.db')\n"
        "db.execute('CREATE TABLE IF NOT EXISTS rdv (quand TEXT, patient TEXT)')\n"
        "db.execute(\"INSERT INTO rdv VALUES ('2026-12-01 09:00', 'Élodie Marchand')\")\n"
        "db.commit()\n"
    )
    client.check_output("python3 -c %s", script)
    return sha256_tree(client, SOURCE)


# ----------------------------------------------------------------------------- audit: practice side
def test_borg_and_settings_locked_down(client, expect):
    assert client.package("borgbackup").is_installed
    for path in ("/etc/cabinet/backup.json", "/etc/cabinet/backup/passphrase"):
        f = client.file(path)
        assert f.exists and f.user == "root" and f.mode == 0o600, f"{path} must be 0600 root"
    assert client.file("/var/lib/cabinet/backup").mode == 0o700
    conf = settings(client)
    assert conf["sources"] == expect("backup_sources")
    wanted = {"local"} if expect("backup_local_enabled") else set()
    wanted |= {"offsite"} if expect("backup_offsite_enabled") else set()
    assert set(repo_names(client)) == wanted


def test_two_copies(client, expect):
    assert expect("backup_local_enabled") and expect("backup_offsite_enabled"), \
        "the practice needs two copies: a local disk and the off-site server"


def test_timers(client, expect):
    for timer in ("cabinet-backup.timer", "cabinet-backup-check.timer"):
        assert client.service(timer).is_enabled and client.service(timer).is_running, f"{timer} not active"
    verify = client.service("cabinet-backup-verify.timer")
    assert verify.is_enabled == bool(expect("backup_verify_enabled"))
    unit = client.file("/etc/systemd/system/cabinet-backup.timer").content_string
    assert f"OnCalendar=*-*-* {expect('backup_time')}:00" in unit
    assert "FixedRandomDelay=true" in unit and "Persistent=true" in unit


def test_local_disk_detached_between_runs(client, expect):
    if not expect("backup_local_enabled"):
        not_applicable("no local copy on this host")
    mountpoint = expect("backup_local_mountpoint")
    busy = client.run(f"fuser -s {LOCK} 2>/dev/null || "
                      "systemctl is-active -q cabinet-backup.service cabinet-backup-verify.service")
    if busy.rc == 0:
        pytest.skip("a backup or verify is running now")
    assert client.run(f"findmnt -n {shlex.quote(mountpoint)}").rc != 0, \
        f"the backup disk stays mounted on {mountpoint} outside runs"


def test_offsite_host_key_pinned(client, offsite):
    server, _ = offsite
    pinned = client.file("/etc/cabinet/backup/known_hosts").content_string.split()
    real = server.check_output("cat /etc/ssh/ssh_host_ed25519_key.pub").split()
    assert pinned[1:3] == real[0:2], "known_hosts does not hold the off-site server's host key"
    assert client.file("/etc/cabinet/backup/id_ed25519").mode == 0o600


def test_offsite_copy_is_hosted_by_an_hds_certified_provider(client, expect, evidence):
    """The off-site copy holds patients' data: its host must be certified HDS (L.1111-8 CSP).
    The inventory records who hosts it and the certificate; without one, this is a gap."""
    if not expect("backup_offsite_enabled"):
        not_applicable("this host has no off-site copy")
    provider, certificate = expect("backup_offsite_provider").strip(), expect("backup_offsite_hds_certificate").strip()
    evidence("Hébergeur de la copie hors site", provider or "non renseigné")
    evidence("Certificat HDS de l'hébergeur", certificate or "non renseigné")
    assert provider and certificate, ("the inventory names no HDS-certified host for the off-site copy "
                                      "(backup_offsite_provider, backup_offsite_hds_certificate)")


# ----------------------------------------------------------------------------- audit: off-site side
def test_server_user_and_repositories_root(server, expect):
    user = expect("backup_server_user")
    assert server.package("borgbackup").is_installed
    assert server.service("ssh").is_running
    account = server.user(user)
    assert account.exists and account.password in ("!", "*", "!*"), f"{user} must have no password"
    root = server.file(expect("backup_server_root"))
    assert root.is_directory and root.user == user and root.mode == 0o700


def test_server_keys_only_run_append_only_serve(server, expect):
    user = expect("backup_server_user")
    root = expect("backup_server_root").rstrip("/")
    home = server.user(user).home
    keys = server.file(f"{home}/.ssh/authorized_keys")
    if not keys.exists:
        not_applicable("no practice registered on this server yet")
    assert keys.user == user and keys.mode == 0o600
    # sshd reads the keys as that user: every folder above them must let it through.
    assert server.run(f"runuser -u {user} -- test -r {keys.path}").rc == 0, \
        f"{user} cannot read {keys.path} (a folder above it is closed to it): every practice's login fails"
    lines = [line for line in keys.content_string.splitlines() if line.strip() and not line.startswith("#")]
    assert lines, "authorized_keys is empty"
    state_dir = json.loads(server.check_output(f"cat {SERVER_SETTINGS}"))["state_dir"]
    for line in lines:
        name = line.rsplit("cabinet-backup@", 1)[-1] if "cabinet-backup@" in line else "?"
        # The server's session lock (shared), then append-only borg serve on its own repository,
        # under a storage quota.
        forced = re.fullmatch(
            rf'command="flock -s -w [0-9]+ {re.escape(state_dir)}/locks/{re.escape(name)}\.lock borg serve --append-only'
            rf' --restrict-to-repository {re.escape(root)}/{re.escape(name)} --storage-quota ([0-9.]+[GTP])",restrict'
            r' ssh-ed25519 \S+ cabinet-backup@\S+', line)
        assert forced, f"a key is not limited to append-only borg serve on its own repository under a quota: {line[:200]}"


def test_server_secrets_and_timers(server, expect):
    user = expect("backup_server_user")
    listing = server.run("stat -c '%U %a %n' /etc/cabinet/backup-server/clients/*.passphrase 2>/dev/null").stdout
    for line in listing.splitlines():
        owner, mode, path = line.split(" ", 2)
        assert owner == user and mode == "600", f"{path} must be 0600 {user}"
    for job in ("check", "prune", "verify"):
        timer = server.service(f"cabinet-backup-server-{job}.timer")
        assert timer.is_enabled and timer.is_running, f"cabinet-backup-server-{job}.timer not active"


def test_server_no_repository_tampered(server):
    status = server_cmd(server, "status")
    assert status.rc == 0, status.stderr
    tampered = [name for name, state in json.loads(status.stdout).items() if state.get("tampered")]
    assert not tampered, f"archives disappeared from: {', '.join(tampered)} (see cabinet-backup-server rollback)"


# ----------------------------------------------------------------------------- lab: backups restore
def test_run_writes_both_copies_and_they_restore_identical(lab, client, source_data, mailsink):
    assert backup_now(client) == "success", client.run("journalctl -u cabinet-backup -n 40 --no-pager").stdout
    for repo in repo_names(client):
        names = archives(client, repo)
        assert names, f"no archive in {repo}"
        restored = restore(client, repo, names[-1])
        assert restored == source_data, f"files restored from {repo} differ from the source"
        assert f"./{ACCENTED}" in restored and f"./{LARGE}" in restored
    # The dump of the database is in the archive, as SQL.
    dump = client.run(f"cabinet-backup borg local extract --stdout ::{archives(client, 'local')[-1]} "
                      f"{DUMP_DIR_DEFAULT.lstrip('/')}/agenda.dump")
    assert dump.rc == 0 and "Élodie Marchand" in dump.stdout, "the database dump is not in the archive"
    assert client.run(f"findmnt -n {settings(client)['local_mountpoint']}").rc != 0, "disk left mounted"


def test_runs_never_overlap(lab, client, source_data):
    before = len(archives(client, "local"))
    out = client.run(f"flock -n {LOCK} cabinet-backup run")
    assert out.rc == 0 and "holds the lock" in out.stdout, out.stdout + out.stderr
    assert len(archives(client, "local")) == before, "a second run went ahead while the first held the lock"


def test_offsite_key_cannot_make_the_server_lose_archives(lab, client, offsite, source_data, mailsink):
    server, name = offsite
    assert backup_now(client) == "success"
    kept = archives(client, "offsite")
    assert len(kept) >= 2
    # The server's hourly guard has seen them.
    assert server_cmd(server, "check", name).rc == 0

    # The key reaches nothing but its own repository, and never a shell.
    target = settings(client)["repositories"][-1]["url"].split("//")[1].split(":")[0]
    ssh = ("timeout 60 ssh -i /etc/cabinet/backup/id_ed25519 -o BatchMode=yes -o IdentitiesOnly=yes "
           f"-o UserKnownHostsFile=/etc/cabinet/backup/known_hosts {target}")
    shell = client.run(f"{ssh} id </dev/null")
    assert "uid=" not in shell.stdout, "the practice's key opened a shell on the off-site server"
    # Refused by the forced command itself, not by a failed connection (ssh exits 255 on its own
    # failures, timeout 124): borg, run instead of `id`, answers with its own usage and serves nothing.
    assert shell.rc == 0 and shell.stdout.startswith("usage: borg"), \
        f"not borg's answer to `id` (exit {shell.rc}): {shell.stdout[:200]} {shell.stderr[-400:]}"
    # And the same key does reach borg serve: with no request, it says so itself.
    serve = client.run(f"{ssh} borg serve </dev/null")
    answer = serve.stdout + serve.stderr  # borg's stderr, which ssh relays
    assert serve.rc == 0 and "Got connection close before repository was opened" in answer, \
        f"the key does not reach borg serve (exit {serve.rc}): {answer[-400:]}"
    # Deleting the whole repository is refused by borg serve --append-only.
    whole = client.run("BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=YES cabinet-backup borg offsite delete")
    assert whole.rc != 0 and "append-only" in whole.stderr, whole.stderr[-400:]

    # borg 1.x acknowledges an archive delete or prune in append-only mode but only marks them:
    # the data stays until the server compacts, which the guard now prevents.
    client.run(f"cabinet-backup borg offsite delete ::{kept[0]}")
    client.run("cabinet-backup borg offsite prune --keep-last 1")
    host_alerts = mail_host(server)
    before = len(mailsink.alerts(host_alerts, ROLE, "disappeared"))
    assert server_cmd(server, "check", name).rc != 0, "the guard did not notice the missing archives"
    mail = wait_alert_naming(mailsink, host_alerts, "disappeared", before, kept[0])
    assert mail["X-Cabinet-Severity"] == "critical"
    prune = server_cmd(server, "prune", name)
    assert prune.rc != 0 and "not pruned" in prune.stdout, "the server pruned a tampered repository"

    rollback = server_cmd(server, "rollback", name)
    assert rollback.rc == 0, rollback.stdout + rollback.stderr
    assert client.run("cabinet-backup reset-after-rollback offsite").rc == 0
    assert archives(client, "offsite") == kept, "the roll-back did not bring every archive back"
    # The newest archive the prune had removed, written after the test's files: identical.
    assert restore(client, "offsite", kept[-2]) == source_data
    assert server_cmd(server, "check", name).rc == 0
    assert backup_now(client) == "success", "the practice could not back up after the roll-back"


def server_repo(server, name: str) -> str:
    return json.loads(server.check_output(f"cat {SERVER_SETTINGS}"))["root"] + f"/{name}"


def segments(server, repo: str) -> set[str]:
    return set(server.check_output(f"cd {shlex.quote(repo)} && find data -type f").split())


def test_offsite_same_name_replacement_and_recreate_are_caught(lab, client, offsite, source_data, mailsink):
    """A guard by name passes both; the guard by archive ID catches them, nothing is compacted,
    and the roll-back brings the original archives back byte-identical."""
    server, name = offsite
    assert backup_now(client) == "success"
    kept = archives(client, "offsite")
    assert len(kept) >= 2
    assert server_cmd(server, "check", name).rc == 0  # the baseline, by ID
    repo = server_repo(server, name)
    segments_before = segments(server, repo)
    victim, rewritten = kept[-1], kept[-2]

    # The practice's key deletes ::victim and writes a forged archive under the same name...
    assert client.run(f"cabinet-backup borg offsite delete ::{victim}").rc == 0
    forged = client.run(f"cabinet-backup borg offsite create ::{victim} /etc/hostname")
    assert forged.rc == 0, forged.stderr[-400:]
    # ...and rewrites another one with borg recreate (same name, a file left out).
    recreated = client.run(f"cabinet-backup borg offsite recreate --exclude {SOURCE.lstrip('/')}/notes.txt ::{rewritten}")
    assert recreated.rc == 0, recreated.stderr[-400:]
    assert archives(client, "offsite") == kept, "the names are all there: a guard by name would pass"

    sender = mail_host(server)
    before = len(mailsink.alerts(sender, ROLE, f"archives of {name} disappeared or changed"))
    assert server_cmd(server, "check", name).rc != 0, "the guard did not notice the replaced archives"
    mail = wait_alert_naming(mailsink, sender, f"archives of {name} disappeared or changed", before,
                             "same name", victim, rewritten)
    assert mail["X-Cabinet-Severity"] == "critical"
    prune = server_cmd(server, "prune", name)
    assert prune.rc != 0 and "not compacted" in prune.stdout, prune.stdout + prune.stderr
    assert segments_before <= segments(server, repo), "segments of the original archives were compacted away"

    rollback = server_cmd(server, "rollback", name)
    assert rollback.rc == 0, rollback.stdout + rollback.stderr
    assert client.run("cabinet-backup reset-after-rollback offsite").rc == 0
    assert archives(client, "offsite") == kept
    assert restore(client, "offsite", victim) == source_data, "the original archive did not come back identical"
    assert restore(client, "offsite", rewritten) == source_data, "the recreated archive did not come back identical"
    assert server_cmd(server, "check", name).rc == 0
    assert backup_now(client) == "success", "the practice could not back up after the roll-back"


def test_offsite_chunk_deleted_behind_unchanged_archive_ids_is_caught(lab, client, offsite, source_data, mailsink):
    """borg serve --append-only lets the practice's key delete any object (borg debug
    delete-obj): a chunk that every archive uses goes, while the archive list and IDs stay the
    same, and the next compaction would free it for good. The guard reads the segments written
    since its last check, stops compaction, and the roll-back brings the file back identical."""
    server, name = offsite
    assert backup_now(client) == "success"
    kept = archives(client, "offsite")
    assert server_cmd(server, "check", name).rc == 0  # the baseline
    repo = server_repo(server, name)
    segments_before = segments(server, repo)
    # The 300 kB file is a single chunk (borg's smallest chunk is 512 KiB): its ID is the id-hash
    # of its content, computed with the practice's key.
    chunk = client.check_output(
        f"cabinet-backup borg offsite debug id-hash :: {shlex.quote(f'{SOURCE}/{ACCENTED}')}").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", chunk), chunk
    deleted = client.run(f"cabinet-backup borg offsite debug delete-obj :: {chunk}")
    assert deleted.rc == 0 and f"object {chunk} deleted" in deleted.stdout, deleted.stdout + deleted.stderr
    assert archives(client, "offsite") == kept

    sender = mail_host(server)
    before = len(mailsink.alerts(sender, ROLE, f"archives of {name} disappeared or changed"))
    checked = server_cmd(server, "check", name)
    assert checked.rc != 0, "the guard did not notice the deleted chunk: " + checked.stdout
    mail = wait_alert_naming(mailsink, sender, f"archives of {name} disappeared or changed", before,
                             "deleted or overwritten", chunk[:16])
    assert mail["X-Cabinet-Severity"] == "critical"
    assert "no longer listed" not in mail["body"] and "same name" not in mail["body"], \
        "the archive IDs changed: this test no longer isolates a deletion behind unchanged IDs"
    prune = server_cmd(server, "prune", name)
    assert prune.rc != 0 and "not compacted" in prune.stdout, prune.stdout + prune.stderr
    assert segments_before <= segments(server, repo), "segments holding the chunk were compacted away"

    rollback = server_cmd(server, "rollback", name)
    assert rollback.rc == 0, rollback.stdout + rollback.stderr
    assert client.run("cabinet-backup reset-after-rollback offsite").rc == 0
    assert archives(client, "offsite") == kept
    assert restore(client, "offsite", kept[-1]) == source_data, "the deleted chunk did not come back"
    assert server_cmd(server, "check", name).rc == 0
    assert backup_now(client) == "success", "the practice could not back up after the roll-back"


def test_offsite_guard_treats_a_locked_repository_as_busy(lab, client, offsite, mailsink):
    """A long backup or borg check holds borg's lock: the hourly guard waits, says busy, and
    alerts only once that lasts longer than its threshold (set to 0 here)."""
    server, name = offsite
    conf = json.loads(server.check_output(f"cat {SERVER_SETTINGS}"))
    repo = server_repo(server, name)
    sender = mail_host(server)
    unreadable = f"repository of {name} cannot be read"
    unreadable_before = len(mailsink.alerts(sender, ROLE, unreadable))
    busy_before = len(mailsink.alerts(sender, ROLE, f"repository of {name} stays locked"))
    server.check_output(f"cp -p {SERVER_SETTINGS} {SERVER_SETTINGS}.lab")
    try:
        _edit_json(server, SERVER_SETTINGS, "d['lock_wait_seconds'] = 3")
        # borg's own repository lock, held as borg create or borg check holds it.
        server.check_output(
            f"runuser -u {conf['user']} -- env BORG_BASE_DIR=/tmp/cabinet-lab-borg BORG_RELOCATED_REPO_ACCESS_IS_OK=yes"
            f" setsid -f sh -c 'echo $$ > /tmp/cabinet-lab-borg.pid; exec borg with-lock {repo} sleep 120'"
            " >/dev/null 2>&1 </dev/null")
        server.check_output(f"for i in $(seq 1 50); do ls {repo}/lock.exclusive >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1")
        busy = server_cmd(server, "check", name)
        assert busy.rc == 0 and "busy" in busy.stdout, busy.stdout + busy.stderr
        # Busy for longer than the threshold: now it alerts.
        _edit_json(server, SERVER_SETTINGS, "d['busy_alert_hours'] = 0")
        lasting = server_cmd(server, "check", name)
        assert lasting.rc != 0, lasting.stdout
        mail = mailsink.wait_alert(sender, ROLE, f"repository of {name} stays locked", busy_before)
        assert mail["X-Cabinet-Severity"] == "critical"
        assert len(mailsink.alerts(sender, ROLE, unreadable)) == unreadable_before, \
            "a locked repository was reported as unreadable"
    finally:
        server.run("kill $(cat /tmp/cabinet-lab-borg.pid) 2>/dev/null; rm -f /tmp/cabinet-lab-borg.pid")
        server.check_output(f"mv {SERVER_SETTINGS}.lab {SERVER_SETTINGS}")
    server.check_output(f"for i in $(seq 1 50); do test -e {repo}/lock.exclusive || exit 0; sleep 0.2; done; exit 1")
    done = server_cmd(server, "check", name)
    assert done.rc == 0 and "busy" not in done.stdout, done.stdout
    assert "busy_since" not in json.loads(server_cmd(server, "status", name).stdout)[name]


def test_stopped_or_killed_run_leaves_the_disk_unmounted(lab, client, source_data):
    """systemctl stop (SIGTERM) while the disk is mounted: the run unmounts it on its way out;
    a SIGKILL: ExecStopPost unmounts it."""
    conf = settings(client)
    mountpoint = shlex.quote(conf["local_mountpoint"])
    wait_mounted = (f"(for i in $(seq 1 1200); do findmnt -n {mountpoint} >/dev/null && exit 0; sleep 0.05; done;"
                    " echo never mounted; exit 1)")
    for stop, unmounted_by in (("systemctl stop cabinet-backup.service", "stopped before the end"),
                               ("systemctl kill --signal=SIGKILL cabinet-backup.service", "left mounted by a stopped command")):
        since = client.check_output("date '+%Y-%m-%d %H:%M:%S'")
        client.check_output("systemctl reset-failed cabinet-backup.service 2>/dev/null;"
                            " systemctl start --no-block cabinet-backup.service")
        hit = client.run(f"{wait_mounted} && {stop}")
        assert hit.rc == 0, hit.stdout + hit.stderr
        client.check_output("for i in $(seq 1 600); do case $(systemctl show -p ActiveState --value cabinet-backup.service)"
                            " in inactive|failed) exit 0;; esac; sleep 0.2; done; exit 1")
        journal = client.check_output(f"journalctl -u cabinet-backup --since {shlex.quote(since)} --no-pager -o cat")
        assert client.run(f"findmnt -n {mountpoint}").rc != 0, f"the disk stays mounted after `{stop}`:\n{journal[-1500:]}"
        assert unmounted_by in journal and "unmounted" in journal, journal[-1500:]
    assert backup_now(client) == "success", "the next run failed after a stopped one"


def test_disk_found_mounted_at_start_alerts_and_is_unmounted(lab, client, source_data, mailsink):
    conf = settings(client)
    local = next(r for r in conf["repositories"] if r["kind"] == "local")
    sender = mail_host(client)
    before = len(mailsink.alerts(sender, ROLE, "local disk found mounted"))
    client.check_output(f"mount -o nodev,nosuid,noexec {shlex.quote(local['device'])} {shlex.quote(local['mountpoint'])}")
    try:
        assert backup_now(client) == "success"
        mail = mailsink.wait_alert(sender, ROLE, "local disk found mounted", before)
        assert mail["X-Cabinet-Severity"] == "warning"
        assert client.run(f"findmnt -n {shlex.quote(local['mountpoint'])}").rc != 0, "the disk found mounted stays mounted"
    finally:
        client.run(f"umount {shlex.quote(local['mountpoint'])} 2>/dev/null")


def test_offsite_down_local_still_written_alert_then_catch_up(lab, client, offsite, source_data, mailsink):
    server, _ = offsite
    sender = mail_host(client)
    local_before, offsite_before = len(archives(client, "local")), len(archives(client, "offsite"))
    alerts_before = len(mailsink.alerts(sender, ROLE, "offsite repository unreachable"))
    server.check_output("systemctl stop ssh.socket ssh.service 2>/dev/null; systemctl stop ssh.service")
    try:
        assert backup_now(client) != "success", "a run with the off-site server down reported success"
        assert len(archives(client, "local")) == local_before + 1, "the local copy was not written"
        mail = mailsink.wait_alert(sender, ROLE, "offsite repository unreachable", alerts_before)
        assert mail["X-Cabinet-Severity"] == "critical"
    finally:
        server.check_output("systemctl start ssh.service")
    recovered_before = len(mailsink.alerts(sender, ROLE, "works again"))
    assert backup_now(client) == "success"
    assert len(archives(client, "offsite")) == offsite_before + 1, "the next run did not catch up off site"
    mailsink.wait_alert(sender, ROLE, "works again", recovered_before)


def test_restore_test_passes_then_catches_a_corrupted_repository(lab, client, offsite, source_data, mailsink):
    server, name = offsite
    assert run_unit(client, "cabinet-backup-verify.service", timeout=900) == "success", \
        client.run("journalctl -u cabinet-backup-verify -n 40 --no-pager").stdout
    journal = client.check_output("journalctl -u cabinet-backup-verify -n 40 --no-pager -o cat")
    assert "restored and identical to the source" in journal

    repo = json.loads(server.check_output("cat /etc/cabinet/backup-server.json"))["root"] + f"/{name}"
    sender = mail_host(client)
    before = len(mailsink.alerts(sender, ROLE, "restore test or check failed for offsite"))
    server.check_output(f"cp -a {repo} {repo}.lab-copy")
    try:
        # Flip bytes in the middle of every data segment, as a failing disk would.
        server.check_output(
            "python3 -c %s", "import glob, os\n"
            f"for p in glob.glob({repo!r} + '/data/*/*'):\n"
            "    size = os.path.getsize(p)\n"
            "    if size > 4096:\n"
            "        with open(p, 'r+b') as f:\n"
            "            f.seek(size // 2); f.write(os.urandom(64))\n")
        assert run_unit(client, "cabinet-backup-verify.service", timeout=900) != "success"
        mail = mailsink.wait_alert(sender, ROLE, "restore test or check failed for offsite", before)
        assert mail["X-Cabinet-Severity"] == "critical"
    finally:
        server.check_output(f"rm -rf {repo} && mv {repo}.lab-copy {repo}")


def test_restore_test_reports_a_source_changed_in_place_with_mtime_kept(lab, client, source_data, mailsink):
    """Same size, mtime set back: the size+mtime rule takes the file as unchanged, so the restore
    test compares it, and the mismatch must reach the MSP, named for what it is."""
    path = f"{SOURCE}/notes.txt"
    assert backup_now(client) == "success"  # the newest archive holds the current content
    saved = client.check_output(f"stat -c '%s %Y' {path}")
    sender = mail_host(client)
    subject = "restore test or check failed for local"
    before = len(mailsink.alerts(sender, ROLE, subject))
    edit = ("import os, sys\n"
            "p = sys.argv[1]\n"
            "st = os.stat(p)\n"
            "with open(p, 'r+b') as f:\n"
            "    data = f.read(); f.seek(0); f.write(data.replace(b'3', b'4'))\n"
            "os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))\n")
    client.check_output("python3 -c %s %s", edit, path)
    try:
        assert client.check_output(f"stat -c '%s %Y' {path}") == saved, "size or mtime moved"
        assert run_unit(client, "cabinet-backup-verify.service", timeout=900) != "success", \
            "the restore test did not notice a source file whose content changed with its mtime kept"
        mail = wait_alert_naming(mailsink, sender, subject, before, path, "mtime")
        assert mail["X-Cabinet-Severity"] == "critical"
    finally:
        undo = edit.replace("b'3', b'4'", "b'4', b'3'")
        client.check_output("python3 -c %s %s", undo, path)
    assert sha256_tree(client, SOURCE) == source_data


def test_stale_backup_alerts(lab, client, mailsink, expect):
    sender = mail_host(client)
    before = len(mailsink.alerts(sender, ROLE, "no recent backup in local"))
    age = (int(expect("backup_max_age_hours")) + 2) * 3600
    edit = ("import json, sys, time\n"
            "p = '/var/lib/cabinet/backup/state.json'\n"
            "s = json.load(open(p))\n"
            "r = s['repositories']['local']\n"
            "r['saved_success'] = r.get('saved_success', r['last_success'])\n"
            f"r['last_success'] = time.time() - {age}\n"
            "s['alerted'].pop('stale:local', None)\n"
            "json.dump(s, open(p, 'w'))\n")
    client.check_output("python3 -c %s", edit)
    try:
        assert run_unit(client, "cabinet-backup-check.service") != "success"
        mail = mailsink.wait_alert(sender, ROLE, "no recent backup in local", before)
        assert mail["X-Cabinet-Severity"] == "critical"
    finally:
        client.check_output("python3 -c %s", "import json\n"
                            "p = '/var/lib/cabinet/backup/state.json'\n"
                            "s = json.load(open(p))\n"
                            "r = s['repositories']['local']\n"
                            "r['last_success'] = r.pop('saved_success')\n"
                            "json.dump(s, open(p, 'w'))\n")
    assert run_unit(client, "cabinet-backup-check.service") == "success"


def _edit_json(handle, path: str, code: str) -> None:
    """Apply ``code`` (Python, on ``d``) to a JSON file on the host, keeping its mode."""
    handle.check_output("python3 -c %s", "import json\n"
                        f"p = {path!r}\n"
                        "d = json.load(open(p))\n"
                        f"{code}\n"
                        "open(p, 'w').write(json.dumps(d, indent=2))\n")


def test_failed_dump_alerts_keeps_previous_and_backs_up_the_rest(lab, client, source_data, mailsink):
    dump = f"{settings(client)['dump_dir']}/agenda.dump"
    previous = client.check_output(f"sha256sum {dump}")
    sender = mail_host(client)
    before = len(mailsink.alerts(sender, ROLE, "database dump agenda failed"))
    local_before = len(archives(client, "local"))
    client.check_output("cp -p /etc/cabinet/backup.json /etc/cabinet/backup.json.lab")
    try:
        _edit_json(client, "/etc/cabinet/backup.json", "d['dumps'][0]['command'] = 'echo partial; exit 3'")
        assert backup_now(client) == "success", "a failed dump must not fail the backup of the files"
        mailsink.wait_alert(sender, ROLE, "database dump agenda failed", before)
        assert client.check_output(f"sha256sum {dump}") == previous, "the failed dump replaced the previous one"
        assert len(archives(client, "local")) == local_before + 1
    finally:
        client.check_output("mv /etc/cabinet/backup.json.lab /etc/cabinet/backup.json")


def test_offsite_server_alerts_when_a_practice_stops_sending(lab, client, offsite, source_data, mailsink):
    server, name = offsite
    path = f"/etc/cabinet/backup-server/clients/{name}.json"
    sender = mail_host(server)
    before = len(mailsink.alerts(sender, ROLE, f"no new off-site archive from {name}"))
    server.check_output(f"cp -p {path} {path}.lab")
    try:
        # A threshold of zero makes the newest archive too old, as 36 hours without one would.
        _edit_json(server, path, "d['max_age_hours'] = 0")
        state_dir = json.loads(server.check_output("cat /etc/cabinet/backup-server.json"))["state_dir"]
        _edit_json(server, f"{state_dir}/{name}.json", "d['alerted'].pop('stale', None)")
        assert server_cmd(server, "check", name).rc != 0
        assert mailsink.wait_alert(sender, ROLE, f"no new off-site archive from {name}", before)["X-Cabinet-Severity"] == "critical"
    finally:
        server.check_output(f"mv {path}.lab {path}")
    assert server_cmd(server, "check", name).rc == 0


# ----------------------------------------------------------------------------- secrets, freshness
def test_passphrase_in_no_world_readable_file_nor_the_journal(host, inventory):
    if is_server(inventory, host):
        default = role_defaults(ROLE)["backup_offsite_server"]
        names = [n for n in inventory.group("backup_clients")
                 if inventory.template(n, inventory.vars(n).get("backup_offsite_server", default)) == host.inventory_name]
    else:
        names = [host.inventory_name]
    secrets = [inventory.template(n, inventory.vars(n).get("backup_passphrase", "")) for n in names]
    secrets = [s for s in secrets if s]
    if not secrets:
        not_applicable("no backup passphrase for this host in the inventory")
    # Where backups keep their settings, state, dumps and (off site) repositories too.
    assert_secrets_not_exposed(host, secrets, "a backup passphrase",
                               roots=SECRET_ROOTS + " /var/backups", lab_roots="/var/lib /srv")


def test_passphrase_never_in_ansible_output(request, inventory):
    secrets = [inventory.template(n, inventory.vars(n).get("backup_passphrase", "")) for n in inventory.group("backup_clients")]
    assert_secrets_not_in_ansible_log(request, secrets, "a backup passphrase", "Backup |")


def test_each_repository_has_a_recent_success(client, expect, evidence):
    """Last: in the lab, the tests above have run backups by now; on a real host, drift. The
    report shows each copy's last success and last restore test."""
    state = json.loads(client.run("cat /var/lib/cabinet/backup/state.json 2>/dev/null || echo '{}'").stdout or "{}")
    limit = int(expect("backup_max_age_hours")) * 3600
    copies = {"local": "disque local", "offsite": "copie hors site"}
    for repo in repo_names(client):
        record = state.get("repositories", {}).get(repo, {})
        evidence(f"Dernière sauvegarde réussie ({copies.get(repo, repo)})", stamp(record.get("last_success")))
        verified = record.get("last_verify")
        evidence(f"Dernier test de restauration ({copies.get(repo, repo)})",
                 f"{stamp(verified)}, {'réussi' if record.get('last_verify_ok') else 'ÉCHOUÉ'}" if verified else "jamais")
    for repo in repo_names(client):
        last = state.get("repositories", {}).get(repo, {}).get("last_success")
        assert last, f"no successful backup to {repo} yet"
        assert time.time() - last <= limit, f"the last successful backup to {repo} is older than {limit // 3600} h"
