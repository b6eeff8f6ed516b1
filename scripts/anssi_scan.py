#!/usr/bin/env python3
"""The ANSSI BP-028 scan (OpenSCAP, ComplianceAsCode's content) of one host: one place for the
system_baseline tests and `make demo`.

    python3 scripts/anssi_scan.py CONTAINER     evaluate the tailored minimal and intermediary
                                                profiles in a podman container, print the counts

The content is ssg-debian12-ds.xml from Debian 13's ssg-debian package (fetched and pinned by
scripts/setup-host.sh), the tailoring tests/integration/files/anssi-bp28-tailoring.xml (each
rule it turns off has its reason in roles/system_baseline/README.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]
SSG_VERSION = "0.1.76-1"
TAILORING = ROOT / "tests" / "integration" / "files" / "anssi-bp28-tailoring.xml"
PROFILES = ("anssi_bp28_minimal", "anssi_bp28_intermediary")
XCCDF = "{http://checklists.nist.gov/xccdf/1.2}"
REMOTE_DS = "/root/ssg-debian12-ds.xml"
REMOTE_TAILORING = "/root/anssi-tailoring.xml"
REMOTE_RESULTS = "/root/oscap-results.xml"


def ssg_content() -> Path:
    cache = Path(os.environ.get("CABINET_CACHE_DIR") or Path.home() / ".cache" / "cabinet-hardening")
    return cache / "anssi" / f"ssg-debian12-ds-{SSG_VERSION}.xml"


def eval_command(profile: str, tailoring: bool) -> str:
    """The oscap command line on the host, for one profile, tailored or stock."""
    args = f"--tailoring-file {REMOTE_TAILORING} " if tailoring else ""
    name = f"xccdf_cabinet-hardening_profile_{profile}" if tailoring else f"xccdf_org.ssgproject.content_profile_{profile}"
    return f"oscap xccdf eval {args}--profile {name} --results {REMOTE_RESULTS} {REMOTE_DS}"


def rule_results(xml_text: str) -> dict[str, list[str]]:
    """Rule ids (without ComplianceAsCode's prefix) by result, from an XCCDF results file;
    rules the profile does not select are left out."""
    results: dict[str, list[str]] = {}
    for rule in ElementTree.fromstring(xml_text).iter(f"{XCCDF}rule-result"):
        result = rule.find(f"{XCCDF}result").text
        if result != "notselected":
            results.setdefault(result, []).append(rule.get("idref").split("content_rule_", 1)[-1])
    return results


def counts(results: dict[str, list[str]]) -> str:
    return ", ".join(f"{kind} {len(rules)}" for kind, rules in sorted(results.items()))


def scan_container(container: str) -> int:
    """Install the scanner in ``container``, evaluate both tailored profiles, print the counts.
    0 when no applicable rule fails."""
    def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", "exec", container, *argv], capture_output=True, text=True, timeout=900, **kwargs)

    if not ssg_content().is_file():
        print(f"{ssg_content()} is missing: run `make setup`", file=sys.stderr)
        return 1
    install = run("sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openscap-scanner")
    if install.returncode != 0:
        print(install.stdout[-2000:] + install.stderr[-2000:], file=sys.stderr)
        return 1
    for local, remote in ((ssg_content(), REMOTE_DS), (TAILORING, REMOTE_TAILORING)):
        subprocess.run(["podman", "cp", str(local), f"{container}:{remote}"], check=True, timeout=120)
    failed = 0
    try:
        for profile in PROFILES:
            done = run("sh", "-c", eval_command(profile, tailoring=True))
            if done.returncode not in (0, 2):
                print(f"{profile}: oscap failed ({done.returncode}): {done.stderr[-1000:]}", file=sys.stderr)
                return 1
            results = rule_results(run("cat", REMOTE_RESULTS, check=True).stdout)
            print(f"    {profile} (tailored): {counts(results)}")
            for rule in results.get("fail", []) + results.get("error", []):
                print(f"      FAIL {rule}")
            failed += len(results.get("fail", [])) + len(results.get("error", []))
    finally:
        run("rm", "-f", REMOTE_DS, REMOTE_TAILORING, REMOTE_RESULTS)
    return 0 if failed == 0 else 3


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(scan_container(sys.argv[1]))
