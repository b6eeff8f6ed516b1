"""One line as each play, and each role on each host, starts and ends: a long run seen moving.

make demo enables it (ANSIBLE_CALLBACKS_ENABLED=cabinet_progress, this folder in
ANSIBLE_CALLBACK_PLUGINS) while Ansible's own output goes to the log in build/. It writes only
to the file descriptor CABINET_PROGRESS_FD names (the terminal, for make demo), and nothing
without it. Each line starts with the elapsed time and the running count of host-tasks run:

    [  41s    112] play 3/11 Alerting | mail to the MSP ... : 3 hosts
    [  41s    112]   alerting       starts on demo-server, demo-workstation, demo-offsite
    [  58s    160]   alerting       done   on demo-server: 16 tasks, 2 changed (17 s)
    [ 118s    402]   ... still on "Install ClamAV" (45 s)
    [ 540s   1215] site.yml done in 540 s: 1215 host-tasks, 310 changed, 0 failed, 0 unreachable

A role's segment ends when the play moves on to another role (its handlers come as a segment of
their own); a task that runs for more than 30 s without a new line gets a "still on" line every
30 s, so that a slow package download does not look like a hang.
"""

from __future__ import annotations

import os
import threading
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: cabinet_progress
type: notification
short_description: one line per play and per role and host, with elapsed time and task count (CABINET_PROGRESS_FD)
description:
  - Used by make demo; writes nothing unless CABINET_PROGRESS_FD names an open file descriptor.
requirements:
  - enable in configuration
"""

QUIET_SECONDS = 30.0   # CABINET_PROGRESS_QUIET overrides it (the unit test's 2 s)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "cabinet_progress"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._out = None
        fd = os.environ.get("CABINET_PROGRESS_FD", "")
        if fd.isdigit():
            try:
                self._out = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8", closefd=False)
            except OSError:
                self._out = None
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_line = self._start
        self._name = "playbook"
        self._plays_total = 0
        self._play_index = 0
        self._executed = 0
        self._totals = {"changed": 0, "failed": 0, "unreachable": 0}
        self._segment: str | None = None          # the role (or "handlers") now running
        self._segment_hosts: dict[str, dict] = {}  # host -> counts and first result time
        self._segment_start = self._start
        self._task = ""
        self._task_start = self._start
        self._done = threading.Event()
        try:
            self._quiet = max(1.0, float(os.environ.get("CABINET_PROGRESS_QUIET", QUIET_SECONDS)))
        except ValueError:
            self._quiet = QUIET_SECONDS
        if self._out is not None:
            threading.Thread(target=self._watch, name="cabinet-progress", daemon=True).start()

    # ------------------------------------------------------------------ output
    def _say(self, text: str) -> None:
        if self._out is None:
            return
        with self._lock:
            now = time.monotonic()
            try:
                self._out.write(f"[{now - self._start:5.0f}s {self._executed:6d}] {text}\n")
            except (OSError, ValueError):
                self._out = None
            self._last_line = now

    def _watch(self) -> None:
        while not self._done.wait(min(5.0, self._quiet / 2)):
            now = time.monotonic()
            if self._task and now - self._last_line >= self._quiet:
                self._say(f'  ... still on "{self._task}" ({now - self._task_start:.0f} s)')

    # ------------------------------------------------------------------ segments
    def _close_segment(self) -> None:
        if self._segment is None:
            return
        now = time.monotonic()
        for host, counts in sorted(self._segment_hosts.items()):
            ran = counts["ok"] + counts["changed"] + counts["failed"] + counts["unreachable"]
            parts = [f"{ran} task{'s' if ran != 1 else ''}"]
            parts += [f"{counts[k]} {k}" for k in ("changed", "failed", "unreachable") if counts[k]]
            if not ran:
                parts = ["nothing to run"]
            self._say(f"  {self._segment:<18} done   on {host}: {', '.join(parts)} ({now - self._segment_start:.0f} s)")
        self._segment = None
        self._segment_hosts = {}

    def _open_segment(self, label: str, hosts: list[str]) -> None:
        self._segment = label
        self._segment_hosts = {}
        self._segment_start = time.monotonic()
        shown = ", ".join(hosts[:6]) + (f" and {len(hosts) - 6} more" if len(hosts) > 6 else "")
        self._say(f"  {label:<18} starts on {shown}")

    def _task_started(self, task, handler: bool) -> None:
        role = task._role.get_name() if getattr(task, "_role", None) else "(play)"
        label = f"{role} handlers" if handler else role
        self._task = (task.name or task.get_name()).strip()
        self._task_start = time.monotonic()
        if label != self._segment:
            self._close_segment()
            self._open_segment(label, self._play_hosts)

    def _result(self, result, kind: str) -> None:
        host = result._host.get_name()
        counts = self._segment_hosts.setdefault(host, {"ok": 0, "changed": 0, "failed": 0, "unreachable": 0, "skipped": 0})
        if kind == "ok" and result._result.get("changed", False):
            kind = "changed"
        counts[kind] += 1
        if kind != "skipped":
            self._executed += 1
        if kind in self._totals:
            self._totals[kind] += 1

    # ------------------------------------------------------------------ events
    def v2_playbook_on_start(self, playbook):
        self._name = os.path.basename(getattr(playbook, "_file_name", "") or "playbook")
        try:
            self._plays_total = len(playbook.get_plays())
        except Exception:  # noqa: BLE001 - a count is a nicety
            self._plays_total = 0
        self._say(f"{self._name}: starting")

    def v2_playbook_on_play_start(self, play):
        self._close_segment()
        self._task = ""
        self._play_index += 1
        try:
            self._play_hosts = [h.get_name() for h in play.get_variable_manager()._inventory.get_hosts(play.hosts)]
        except Exception:  # noqa: BLE001 - the host list is a nicety
            self._play_hosts = []
        total = f"/{self._plays_total}" if self._plays_total else ""
        name = play.get_name().strip()
        self._say(f"play {self._play_index}{total} {name}: {len(self._play_hosts)} host{'s' if len(self._play_hosts) != 1 else ''}")

    _play_hosts: list[str] = []

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_started(task, handler=False)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_started(task, handler=True)

    def v2_runner_on_ok(self, result):
        self._result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "ok" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        self._close_segment()
        self._task = ""
        self._done.set()
        elapsed = time.monotonic() - self._start
        self._say(f"{self._name} done in {elapsed:.0f} s: {self._executed} host-tasks, {self._totals['changed']} changed, "
                  f"{self._totals['failed']} failed, {self._totals['unreachable']} unreachable")
