#!/usr/bin/env bash
# make demo / make demo-clean: a demo practice in containers, hardened and audited.
set -euo pipefail
cd "$(dirname "$0")/.."
# inventories/demo describes the lab (containers reached as root through podman, to make them);
# the practice is then applied and audited as a client's is: build/inventories/demo, over SSH
# as msp-admin with sudo (scripts/demo_inventory.py).
lab=inventories/demo/hosts.yml
client=build/inventories/demo
inventory=$client/hosts.yml
mkdir -p build

demo_start=$(date +%s)
# Each step says how far into the demo it starts (the breakdown of README's times).
step() { local t=$(( $(date +%s) - demo_start )); printf '==> [%d:%02d] %s\n' $((t / 60)) $((t % 60)) "$*"; }
machines=(demo-server demo-workstation demo-offsite demo-mailsink)

case "${1:-up}" in
  up)
    running=$(podman container inspect -f '{{.State.Running}}' "${machines[@]}" 2>/dev/null | grep -c true || :)
    if [ "$running" -eq "${#machines[@]}" ]; then
      # A re-run: the lab is up and was prepared; the practice is what make demo applies again.
      # (After a change to inventories/demo's lab_* variables: make demo-clean first.)
      step "The demo practice's containers are up (${machines[*]})"
    else
      step "Starting the demo practice (containers ${machines[*]})"
      ansible-playbook -i "$lab" molecule/resources/lab-up.yml > build/demo-lab.log 2>&1 \
        || { cat build/demo-lab.log; exit 1; }
    fi
    python3 scripts/demo_inventory.py ssh build/inventories
    step "Applying playbooks/site.yml over SSH as msp-admin (log: build/demo-site.log); [elapsed host-tasks] as it goes:"
    start=$(date +%s)
    # Ansible's own output goes to the log; the progress callback writes its lines to fd 3, this
    # terminal (scripts/callback_plugins/cabinet_progress.py); the log ends with the time of each
    # role and of the slowest tasks (ansible.posix.profile_roles, profile_tasks).
    if ! CABINET_PROGRESS_FD=3 ANSIBLE_CALLBACK_PLUGINS="$PWD/scripts/callback_plugins" \
         ANSIBLE_CALLBACKS_ENABLED=cabinet_progress,ansible.posix.profile_roles,ansible.posix.profile_tasks \
         ansible-playbook -i "$inventory" playbooks/site.yml 3>&1 > build/demo-site.log 2>&1; then
      tail -n 80 build/demo-site.log
      echo "==> site.yml failed: the whole log is build/demo-site.log" >&2
      exit 1
    fi
    sed -n '/PLAY RECAP/,/^$/p' build/demo-site.log
    changed=$(sed -n '/PLAY RECAP/,/^$/p' build/demo-site.log | grep -o 'changed=[0-9]*' | awk -F= '{s += $2} END {print s + 0}')
    step "site.yml took $(( $(date +%s) - start )) s; tasks changed: ${changed:-0}"
    step "Backing up demo-server to its disk and to demo-offsite, as the nightly timer would"
    podman exec demo-server cabinet-backup run > build/demo-backup.log 2>&1 || { cat build/demo-backup.log; exit 1; }
    # Three pytest-xdist workers; --split-suites: a group per host and practice, so the server's
    # practices are audited side by side too (no demo host is a lab host, cabinet_lab, whose checks
    # change it; the checks that use the lab's mail sink take its lock: tests/integration/conftest.py).
    # --assert=plain as the report's own audit: a failure shows its message, not compared values.
    # Its results are the compliance report's below: one audit, not two.
    step "Auditing the demo practice with tests/integration (over SSH with sudo, its practices side by side)"
    rc=0
    rm -rf build/demo-audit && mkdir -p build/demo-audit
    pytest -p no:cacheprovider -q -rfE -n 3 --dist loadgroup --split-suites --assert=plain \
      --ansible-inventory="$inventory" --ansible-log=build/demo-site.log \
      --report-json=build/demo-audit/results.json tests/integration \
      > build/demo-audit/audit.log 2>&1 || rc=$?
    sed -n '/per practice and host/,$p' build/demo-audit/audit.log
    step "The ANSSI BP-028 scanner on demo-server (OpenSCAP, ComplianceAsCode's profiles with the"
    echo "    tailoring explained in roles/system_baseline/README.md)"
    scan=0
    python3 scripts/anssi_scan.py demo-server || scan=$?
    if [ "$scan" -ne 0 ] && [ "$rc" -eq 0 ]; then rc=$scan; fi
    step "The demo practice's compliance report, from that audit (make report INVENTORY=$client audits read-only)"
    report=0
    python3 tests/report/build.py run --inventory "$client" --from-audit build/demo-audit \
      > build/demo-report.log 2>&1 || report=$?
    sed -n '/ practices hold/,$p' build/demo-report.log
    if [ "$report" -ge 2 ]; then cat build/demo-report.log; [ "$rc" -ne 0 ] || rc=$report; fi
    step "Done"
    python3 scripts/tour.py guide
    if [ "$rc" -ne 0 ]; then
      echo "==> The audit or the scanner found drift or errors (exit $rc); details in build/demo-audit/audit.log and above"
      exit "$rc"
    fi
    ;;
  clean)
    if [ -x .venv/bin/ansible-playbook ]; then
      PATH=$PWD/.venv/bin:$PATH ansible-playbook -i "$lab" molecule/resources/lab-down.yml > build/demo-clean.log 2>&1 \
        || { cat build/demo-clean.log; exit 1; }
    else
      podman exec demo-server sh -c 'for d in $(losetup -n -O NAME -j /var/lib/cabinet-lab/demo-server-disk.img); do umount -l "$d"; losetup -d "$d"; done' >/dev/null 2>&1 || :
      podman rm -f demo-server demo-workstation demo-offsite demo-mailsink >/dev/null 2>&1 || :
      podman network rm cabinet-demo >/dev/null 2>&1 || :
    fi
    echo "==> Demo practice removed"
    ;;
  *) echo "usage: demo.sh up|clean" >&2; exit 2 ;;
esac
