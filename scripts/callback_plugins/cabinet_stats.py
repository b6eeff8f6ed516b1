"""A run's numbers, written as JSON for the fleet runner and the benchmark.

Enabled by scripts/fleet.py and scripts/bench.py (ANSIBLE_CALLBACKS_ENABLED=cabinet_stats, with
this folder in ANSIBLE_CALLBACK_PLUGINS); it writes nothing unless CABINET_STATS_FILE names the
file. It does not replace the output callback: the run's log stays Ansible's own. It records

- per host, the recap's counters (ok, changed, failures, unreachable, skipped, rescued,
  ignored): the fleet runner's result for a client comes from them, not from parsing text;
- per play, its name, its wall time, the task headers shown and the host-task results of each
  kind: where a re-run spends its time (issue 15);
- the whole run's wall time and host-task results;
- for each host that could not be reached, the play (its index, from 0) where that first
  happened: 0 is a machine off from the start (playbooks/validate.yml's first play reaches every
  host), more is a machine lost during the run.

A host-task result is one task's outcome on one host (a loop's items count once). "executed"
counts results that ran on the host (ok, changed, failed, unreachable); skipped ones are counted
apart, they cost the controller a condition only.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: cabinet_stats
type: aggregate
short_description: write a run's per-host recap and per-play costs as JSON (CABINET_STATS_FILE)
description:
  - Used by the toolkit's fleet runner and benchmark; writes nothing unless CABINET_STATS_FILE is set.
requirements:
  - enable in configuration
"""

KINDS = ("ok", "changed", "failed", "unreachable", "skipped")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "cabinet_stats"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._path = os.environ.get("CABINET_STATS_FILE", "")
        self._start = time.monotonic()
        self._plays: list[dict] = []
        self._play_start = None
        self._unreachable_play: dict[str, int] = {}

    def _close_play(self):
        if self._plays and self._play_start is not None:
            self._plays[-1]["seconds"] = round(time.monotonic() - self._play_start, 3)
        self._play_start = None

    def v2_playbook_on_play_start(self, play):
        self._close_play()
        self._plays.append({"name": play.get_name().strip(), "tasks": 0, **{k: 0 for k in KINDS}})
        self._play_start = time.monotonic()

    def _task(self):
        if self._plays:
            self._plays[-1]["tasks"] += 1

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task()

    def v2_playbook_on_handler_task_start(self, task):
        self._task()

    def _count(self, kind):
        if self._plays:
            self._plays[-1][kind] += 1

    def v2_runner_on_ok(self, result):
        self._count("changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count("failed")

    def v2_runner_on_unreachable(self, result):
        self._count("unreachable")
        self._unreachable_play.setdefault(result._host.get_name(), max(len(self._plays) - 1, 0))

    def v2_runner_on_skipped(self, result):
        self._count("skipped")

    def v2_playbook_on_stats(self, stats):
        self._close_play()
        if not self._path:
            return
        hosts = {}
        for host in sorted(stats.processed):
            summary = stats.summarize(host)
            hosts[host] = {k: int(summary.get(k, 0)) for k in
                           ("ok", "changed", "failures", "unreachable", "skipped", "rescued", "ignored")}
        totals = {k: sum(p[k] for p in self._plays) for k in KINDS}
        data = {
            "schema": 1,
            "seconds": round(time.monotonic() - self._start, 3),
            "hosts": hosts,
            "plays": self._plays,
            "task_headers": sum(p["tasks"] for p in self._plays),
            "results": totals,
            "executed": totals["ok"] + totals["changed"] + totals["failed"] + totals["unreachable"],
            "unreachable_play": dict(sorted(self._unreachable_play.items())),
        }
        # Written whole, then renamed: a reader never sees half a file.
        folder = os.path.dirname(os.path.abspath(self._path))
        fd, tmp = tempfile.mkstemp(prefix=".stats-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1)
            os.replace(tmp, self._path)
        except BaseException:
            os.unlink(tmp)
            raise
