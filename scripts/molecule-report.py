#!/usr/bin/env python3
"""Where Molecule's time goes: seconds per scenario and phase, and each verify's slowest tests.

    scripts/molecule-report.py build/molecule            prints the table, writes times.md/.json

Reads build/molecule/<scenario>.log (Molecule's own lines stamped "@<epoch> " by
molecule-all.sh) and build/molecule/<scenario>-verify.xml (pytest's JUnit report). The
result is kept in build/molecule/times.json and times.md, to compare the next run with.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

STEP = re.compile(r"^@(?P<t>\d+) INFO\s+\[(?P<scenario>[^ ]+) > (?P<action>[a-z_]+)\] (?P<what>Executing|Executed)")
PHASES = ["create", "prepare", "check", "converge", "idempotence", "verify", "destroy"]


def phases(log: Path) -> dict[str, int]:
    """Seconds per action; destroy counts both of its runs (before and after)."""
    times: dict[str, int] = {}
    started: dict[str, int] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        match = STEP.match(line)
        if not match:
            continue
        action, stamp = match["action"], int(match["t"])
        if match["what"] == "Executing":
            started[action] = stamp
        elif action in started:
            times[action] = times.get(action, 0) + stamp - started.pop(action)
    return times


def slowest(xml: Path, count: int = 10) -> list[tuple[float, str]]:
    if not xml.is_file():
        return []
    cases = []
    for case in ET.parse(xml).iter("testcase"):
        cases.append((float(case.get("time", 0)), f"{case.get('name')}"))
    return sorted(cases, reverse=True)[:count]


def main(folder: str) -> int:
    base = Path(folder)
    report: dict[str, dict] = {}
    for result in sorted(base.glob("*.result")):
        scenario, rc, total = result.read_text(encoding="utf-8").split()
        log = base / f"{scenario}.log"
        report[scenario] = {"result": "passed" if rc == "0" else "FAILED", "total": int(total),
                            "phases": phases(log) if log.is_file() else {},
                            "slowest": slowest(base / f"{scenario}-verify.xml")}
    if not report:
        return 0
    lines = ["| scenario | result | " + " | ".join(PHASES) + " | total |",
             "|---" * (len(PHASES) + 3) + "|"]
    for scenario, data in sorted(report.items(), key=lambda r: -r[1]["total"]):
        cells = [str(data["phases"].get(p, "-")) for p in PHASES]
        lines.append(f"| {scenario} | {data['result']} | " + " | ".join(cells) + f" | {data['total']} |")
    lines.append("")
    for scenario, data in sorted(report.items(), key=lambda r: -r[1]["total"]):
        if data["slowest"]:
            lines.append(f"{scenario}: ten slowest verify tests (s)")
            lines.extend(f"  {secs:7.1f}  {name}" for secs, name in data["slowest"])
    text = "\n".join(lines)
    print(text)
    (base / "times.md").write_text(text + "\n", encoding="utf-8")
    (base / "times.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/molecule"))
