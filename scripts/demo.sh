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

case "${1:-up}" in
  up)
    echo "==> Starting the demo practice (containers demo-server, demo-workstation, demo-offsite, demo-mailsink)"
    ansible-playbook -i "$lab" molecule/resources/lab-up.yml > build/demo-lab.log 2>&1 \
      || { cat build/demo-lab.log; exit 1; }
    python3 scripts/demo_inventory.py ssh build/inventories
    echo "==> Applying playbooks/site.yml (log: build/demo-site.log); [elapsed host-tasks] as it goes:"
    start=$(date +%s)
    # Ansible's own output goes to the log; the progress callback writes its lines to fd 3, this
    # terminal (scripts/callback_plugins/cabinet_progress.py).
    if ! CABINET_PROGRESS_FD=3 ANSIBLE_CALLBACK_PLUGINS="$PWD/scripts/callback_plugins" \
         ANSIBLE_CALLBACKS_ENABLED=cabinet_progress \
         ansible-playbook -i "$inventory" playbooks/site.yml 3>&1 > build/demo-site.log 2>&1; then
      tail -n 80 build/demo-site.log
      echo "==> site.yml failed: the whole log is build/demo-site.log" >&2
      exit 1
    fi
    sed -n '/PLAY RECAP/,/^$/p' build/demo-site.log
    changed=$(sed -n '/PLAY RECAP/,/^$/p' build/demo-site.log | grep -o 'changed=[0-9]*' | awk -F= '{s += $2} END {print s + 0}')
    echo "==> site.yml took $(( $(date +%s) - start )) s; tasks changed: ${changed:-0}"
    echo "==> Backing up demo-server to its disk and to demo-offsite, as the nightly timer would"
    podman exec demo-server cabinet-backup run > build/demo-backup.log 2>&1 || { cat build/demo-backup.log; exit 1; }
    echo "==> Auditing the demo practice with tests/integration"
    rc=0
    pytest -p no:cacheprovider -q -rfE --ansible-inventory="$inventory" --ansible-log=build/demo-site.log tests/integration \
      > build/demo-audit.log 2>&1 || rc=$?
    sed -n '/per practice and host/,$p' build/demo-audit.log
    echo "==> The ANSSI BP-028 scanner on demo-server (OpenSCAP, ComplianceAsCode's profiles with the"
    echo "    tailoring explained in roles/system_baseline/README.md)"
    scan=0
    python3 scripts/anssi_scan.py demo-server || scan=$?
    if [ "$scan" -ne 0 ] && [ "$rc" -eq 0 ]; then rc=$scan; fi
    echo "==> The demo practice's compliance report (make report INVENTORY=$client: read-only audit)"
    report=0
    python3 tests/report/build.py run --inventory "$client" > build/demo-report.log 2>&1 || report=$?
    sed -n '/ practices hold/,$p' build/demo-report.log
    if [ "$report" -ge 2 ]; then cat build/demo-report.log; [ "$rc" -ne 0 ] || rc=$report; fi
    echo "==> The demo practice's website: https://www.cabinet-demo.localhost:8443/ (a self-signed"
    echo "    certificate of the demo's: accept it once; refuse the banner in one click, then see the"
    echo "    legal pages in the footer). From another machine: ssh -L 8443:127.0.0.1:8443 this-machine"
    if [ "$rc" -ne 0 ]; then
      echo "==> The audit or the scanner found drift or errors (exit $rc); details in build/demo-audit.log and above"
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
