# cabinet_common: helpers shared by cabinet-hardening's root-run commands (cabinet-av,
# cabinet-backup, cabinet-backup-server, cabinet-updates, cabinet-ups-event).
# Managed by Ansible (role alerting, which every role depends on); local changes are overwritten.
# Installed in /usr/local/lib/cabinet (root:root 0755, this file 0644): the commands put that
# folder first on sys.path, so nothing a local user can write is ever imported by root.
"""Alerts, re-alert timing, JSON state files, locks and logging for the cabinet-* commands."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import stat
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable

ALERT_COMMAND = "/usr/local/sbin/cabinet-alert"
SEVERITIES = ("info", "warning", "critical")


class Logger:
    """Lines on stdout (the unit's journal), prefixed with the command's name."""

    def __init__(self, program: str) -> None:
        self.program = program

    def __call__(self, message: str) -> None:
        print(f"{self.program}: {message}", flush=True)

    def error(self, message: str) -> None:
        print(f"{self.program}: {message}", file=sys.stderr, flush=True)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_text(text: str) -> str:
    """A short, stable name for a text (an incident's key)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def tail(text: str | None, lines: int = 15) -> str:
    """The last ``lines`` lines of a command's output, for an alert's body."""
    return "\n".join((text or "").strip().splitlines()[-lines:])


def sha256(path: str | os.PathLike | None, *, fd: int | None = None, max_bytes: int | None = None) -> str:
    """SHA-256 of a file, by path or from an already open descriptor (read from its start).

    ``max_bytes`` stops reading there (with a descriptor): a file a user keeps appending to
    cannot keep root reading for ever; a caller that knows the expected size passes size + 1.
    """
    digest = hashlib.sha256()
    if fd is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        left = max_bytes
        while left is None or left > 0:
            block = os.read(fd, 1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
        return digest.hexdigest()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json_atomic(path: str | os.PathLike, data: dict, mode: int = 0o600) -> None:
    """Write JSON through a new temporary file in the same folder, then rename it into place.

    The temporary file is created with O_EXCL|O_NOFOLLOW, so a file or symlink planted under
    its name is never followed or truncated; the rename replaces a link, never its target.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def alert(practice: str, severity: str, title: str, details: str, *,
          command: str = ALERT_COMMAND, log: Callable[[str], None] | None = None,
          footer: str | None = None, timeout: int = 120, incident: str | None = None,
          incident_key: str = "", incident_about: str = "", incident_detected: str = "") -> bool:
    """Raise an alert through cabinet-alert (journal + mail). True when it was queued.

    The title and details go on the command line and standard input of cabinet-alert, never
    through a shell. ``footer`` (default: the host's name) ends the details. ``incident`` (one
    of INCIDENT_KINDS): the alert may mean a data breach, and cabinet-alert also records it in
    the host's incident register (GDPR art. 33: the 72-hour clock starts), once per
    ``incident_key`` (see record_incident), whatever the mail's fate.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity: expected one of {', '.join(SEVERITIES)}, got {severity!r}")
    if incident is not None and incident not in INCIDENT_KINDS:
        raise ValueError(f"incident: expected one of {', '.join(INCIDENT_KINDS)}, got {incident!r}")
    title = " ".join(title.split())  # one line, whatever a file name or a tool printed
    if log:
        log(f"ALERT [{severity}] {title}")
    body = f"{details.rstrip()}\n\n{footer if footer is not None else 'Host: ' + socket.gethostname()}\n"
    try:
        # --title=...: a title that starts with '-' stays a title. Text that is not valid UTF-8
        # (a file name) is escaped rather than losing the alert.
        argv = [command, f"--practice={practice}", f"--severity={severity}", f"--title={title}"]
        if incident:
            argv += [f"--incident={incident}", f"--incident-key={incident_key}", f"--incident-about={incident_about}"]
            argv += [f"--incident-detected={incident_detected}"] if incident_detected else []
        done = subprocess.run([*argv, "-"],
                              input=body, encoding="utf-8", errors="backslashreplace", check=False, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"cabinet: could not raise the alert {title!r}: {exc}", file=sys.stderr, flush=True)
        return False
    return done.returncode == 0


# ----------------------------------------------------------------------------- incidents
# Alerts that may mean a personal-data breach are also recorded in the host's incident
# register: GDPR art. 33(5) asks every breach to be documented, notified or not, and art. 33(1)
# gives 72 hours from awareness to notify the CNIL. The register is one JSON object a line, in a
# root-only folder, appended to under a lock (O_APPEND), never rewritten: closing an incident
# appends a line. Where the kernel lets root set it, the file also gets the file system's
# append-only flag, which stops a mistake or a careless script; it does not stop root, who can
# take it off. The copy outside the host is the mail each incident's alert sends the MSP.
INCIDENT_DIR = "/var/lib/cabinet/incidents"
INCIDENT_REGISTER = "register.jsonl"
INCIDENT_KINDS = {
    "virus": "Virus détecté sur un poste ou un serveur",
    "offsite_tampered": "Sauvegarde hors site supprimée ou modifiée",
    "integrity": "Fichiers système modifiés en dehors des mises à jour",
    "failed_logins": "Série d'échecs de connexion",
}
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_APPEND_FL = 0x00000020
INCIDENT_FIELD_LIMIT = 4000  # characters kept of a title or details


def _open_register(directory: str | os.PathLike | None, flags: int) -> int:
    """The register's descriptor: a regular root-owned file with one link, in a private folder."""
    folder = private_dir(directory or INCIDENT_DIR)
    fd = os.open(folder / INCIDENT_REGISTER, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, 0o600)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
        os.close(fd)
        raise UnsafePath(f"{folder / INCIDENT_REGISTER}: expected a regular file of uid {os.geteuid()} with one link")
    return fd


def append_only(fd: int) -> bool:
    """Set the file system's append-only flag on ``fd``; False where the kernel refuses
    (a container without CAP_LINUX_IMMUTABLE, a file system without the flag)."""
    import array
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        if flags[0] & FS_APPEND_FL:
            return True
        flags[0] |= FS_APPEND_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
        return True
    except OSError:
        return False


def record_incident(kind: str, practice: str, severity: str, title: str, details: str, host: str, *,
                    key: str = "", about: str = "", detected: str | None = None,
                    directory: str | os.PathLike | None = None, now: str | None = None) -> dict:
    """Append an open incident to the register and return it.

    ``key`` names the event (a quarantined file, a set of changed files, a burst): an incident
    of the same key already in the register, open or closed, is returned instead, so an alert
    retried (its mail failed) or recalled never opens a second incident, nor restarts the clock.
    ``about``: what it concerns beyond this host (on the off-site server, the practice's
    repository). ``detected``: when the event was detected, if before now (UTC, ISO)."""
    if kind not in INCIDENT_KINDS:
        raise ValueError(f"incident: expected one of {', '.join(INCIDENT_KINDS)}, got {kind!r}")
    at = detected or now or utc_now()
    entry = {"event": "open", "id": f"{at.replace(':', '').replace('-', '')}-{os.urandom(4).hex()}",
             "detected": at, "kind": kind, "nature": INCIDENT_KINDS[kind], "practice": practice,
             "severity": severity, "host": host, "title": title[:INCIDENT_FIELD_LIMIT],
             "details": details.strip()[:INCIDENT_FIELD_LIMIT], "key": key[:300], "about": about[:200]}
    return _append(directory, entry, same_key=entry["key"])


def close_incident(incident_id: str, note: str, *, directory: str | os.PathLike | None = None,
                   now: str | None = None) -> dict:
    """Append the closing of an incident (its id, or line-N for a line that cannot be read)
    with what was decided."""
    if incident_id not in {i["id"] for i in incidents(directory) if i["status"] in ("open", "unreadable")}:
        raise KeyError(f"no open incident {incident_id!r} in the register")
    entry = {"event": "close", "id": incident_id, "closed": now or utc_now(), "note": note.strip()[:INCIDENT_FIELD_LIMIT]}
    return _append(directory, entry)


def _append(directory: str | os.PathLike | None, entry: dict, same_key: str = "") -> dict:
    """Append ``entry`` as one line, under the register's lock; with ``same_key``, return the
    incident already recorded under that key instead."""
    fd = _open_register(directory, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:  # (an append-only file's mode cannot change)
            os.fchmod(fd, 0o600)
        append_only(fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if same_key and size:
            for existing in _parse(os.pread(fd, size, 0).decode("utf-8", "replace").split("\n")):
                if existing.get("key") == same_key:
                    return existing
        # A line cut short by a crash or a full disk must not swallow this one.
        lead = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        # ASCII JSON: no character of a file name (U+2028, U+0085...) can end a line early.
        data = lead + (json.dumps(entry, ensure_ascii=True, sort_keys=True) + "\n").encode("ascii")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
        return entry
    finally:
        os.close(fd)


def _parse(lines: list[str]) -> list[dict]:
    found: dict[str, dict] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            found[f"line-{number}"] = {"id": f"line-{number}", "status": "unreadable", "detected": "",
                                       "kind": "?", "title": f"unreadable line {number} of the register"}
            continue
        if entry.get("event") == "open" and entry["id"] not in found:
            found[entry["id"]] = {**entry, "status": "open"}
        elif entry.get("event") == "close" and entry["id"] in found:
            found[entry["id"]].update(status="closed", closed=entry.get("closed"), note=entry.get("note", ""))
    return list(found.values())


def incidents(directory: str | os.PathLike | None = None) -> list[dict]:
    """Every incident in the register, oldest first, each with its status (open, closed, or
    unreadable for a line that cannot be read). Reading creates nothing: no folder yet means
    no incident yet."""
    if not os.path.lexists(directory or INCIDENT_DIR):
        return []
    try:
        fd = _open_register(directory, os.O_RDONLY)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as handle:
        return _parse(handle.read().split("\n"))


class State:
    """A command's JSON state: when each condition was last alerted, plus free keys.

    ``due(key)`` says whether a persisting condition may be alerted again (at most once per
    ``realert_seconds``); ``mark`` records that it was; ``clear`` forgets it once it is over, so
    the next occurrence alerts at once. Saved atomically, 0600.
    """

    def __init__(self, path: str | os.PathLike, realert_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.realert_seconds = realert_seconds
        self.clock = clock
        try:
            self.data = load_json(self.path)
            if not isinstance(self.data, dict):
                self.data = {}
        except (OSError, ValueError):
            self.data = {}
        if not isinstance(self.data.get("alerted"), dict):
            self.data["alerted"] = {}

    @property
    def alerted(self) -> dict:
        return self.data["alerted"]

    def due(self, key: str, every_seconds: float | None = None) -> bool:
        period = self.realert_seconds if every_seconds is None else every_seconds
        last = self.alerted.get(key, 0)
        if isinstance(last, bool) or not isinstance(last, (int, float)) or not math.isfinite(last):
            last = 0  # a damaged entry must not silence (or crash) the alert
        now = self.clock()
        # A clock set back (or a state file from the future) must not silence an alert for ever.
        return last > now or now - last >= period

    def mark(self, key: str) -> None:
        self.alerted[key] = self.clock()

    def clear(self, key: str) -> bool:
        """Forget ``key``; True when it was set (the condition just ended)."""
        return self.alerted.pop(key, None) is not None

    def save(self) -> None:
        private_dir(self.path.parent)
        write_json_atomic(self.path, self.data)


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_dir_nofollow(parts: tuple[str, ...] | list[str]) -> int:
    """Open /parts[0]/parts[1]/... one component at a time; a symlink anywhere raises OSError.

    For root reading or changing files in folders that users can write: a folder swapped for a
    symlink between a check and the use is refused, never followed.
    """
    fd = os.open("/", DIR_FLAGS)
    try:
        for part in parts:
            if part in ("", ".", "..") or "/" in part:
                raise OSError(f"unexpected path component {part!r}")
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular_nofollow(path: str) -> int:
    """A read-only descriptor on the regular file at absolute ``path``, reached without
    following any symlink. A FIFO, device or socket is refused without blocking on it
    (O_NONBLOCK, checked with fstat), so a user cannot make root hang or touch a device."""
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or not parts:
        raise OSError(f"{path!r}: expected an absolute path to a file")
    dir_fd = open_dir_nofollow(parts[:-1])
    try:
        fd = os.open(parts[-1], FILE_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path!r} is not a regular file")
    return fd


class UnsafePath(OSError):
    """A folder that another user could write, or a link where a folder was expected."""


def private_dir(path: str | os.PathLike, mode: int = 0o700) -> Path:
    """``path`` as a folder only its owner (this process's user) can write; created if missing.

    An existing folder is accepted only if it is a real folder (not a symlink), owned by this
    user and not writable by group or others; its ancestors must not let others replace it
    (each one owned by root or this user, and not writable by others unless sticky and ours).
    Raises UnsafePath otherwise: state and locks must never live where another user can plant
    a file.
    """
    path = Path(path)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except FileNotFoundError:
        private_dir(path.parent, 0o755)
        return private_dir(path, mode)
    info = os.lstat(path)
    me = os.geteuid()
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{path} is not a folder (a symlink or a file is there)")
    if info.st_uid != me or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePath(f"{path} must be owned by uid {me} and writable by it alone "
                         f"(owner {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})")
    for parent in path.resolve().parents:
        pinfo = os.stat(parent)
        if pinfo.st_uid not in (0, me) or (pinfo.st_mode & stat.S_IWOTH and not pinfo.st_mode & stat.S_ISVTX):
            raise UnsafePath(f"{parent}, above {path}, can be changed by other users")
    return path


def take_lock(path: str | os.PathLike, wait_seconds: float | None = None) -> IO | None:
    """An exclusive flock on ``path``, held as long as the returned handle stays open.

    ``wait_seconds`` None waits for ever; otherwise None is returned once it is over. The lock
    file is opened without following a symlink, under a root-only folder (/run/lock is 1777:
    a symlink planted there must not make root truncate another file, nor another user hold
    the lock to stop backups), so its folder must be one only the owner can write.
    """
    path = Path(path)
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return handle
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.5)
