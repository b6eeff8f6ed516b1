#!/usr/bin/env bash
# Run Molecule scenarios (each on Debian 12 and 13 at once) and print a summary.
#   scripts/molecule-all.sh [scenario ...]      default: every molecule/*/molecule.yml
# CABINET_MOLECULE_JOBS scenarios run side by side (default 2); each one's full log is kept
# in build/molecule/<scenario>.log and printed when it fails.
set -uo pipefail
cd "$(dirname "$0")/.."
jobs=${CABINET_MOLECULE_JOBS:-2}
scenarios=("$@")
if [ "${#scenarios[@]}" -eq 0 ]; then
  # About longest first, so the two job slots end together (session 9, fresh clone, two at a time,
  # both CPUs in use: system_baseline 644 s, backup 560, ups_monitoring 459, password_policy
  # 409, website_privacy 288, antivirus 253, auto_updates 226, alerting 86); then any other
  # scenario in alphabetical order. (password_policy before backup ends the two slots closer
  # together with these times: 1466 s against 1498 simulated.) Session 16, fresh clone: system_baseline
  # 1180, backup 751, password_policy 599, ups_monitoring 443, website_privacy 320, auto_updates 264,
  # antivirus 227, hardware_health 164, alerting 154; the two slots ended 74 s apart.
  for s in system_baseline password_policy backup ups_monitoring auto_updates website_privacy antivirus hardware_health alerting; do
    [ -f "molecule/$s/molecule.yml" ] && scenarios+=("$s")
  done
  for f in molecule/*/molecule.yml; do
    s=$(basename "$(dirname "$f")")
    case " ${scenarios[*]} " in *" $s "*) ;; *) scenarios+=("$s") ;; esac
  done
fi
# Scenarios use fixed container, network and loop-device names: two runs on one machine (a
# developer's and CI's) would destroy each other's hosts. The second one waits here instead.
# (Molecule runs with fd 9 closed, so a container monitor cannot keep the lock.)
exec 9>/run/lock/cabinet-molecule.lock
if ! flock -n 9; then
  echo "==> another Molecule run holds /run/lock/cabinet-molecule.lock; waiting for it"
  flock -w 5400 9 || { echo "ERROR: the other Molecule run did not end within 90 min" >&2; exit 1; }
fi
echo "==> Ansible strategy: ${ANSIBLE_STRATEGY:-linear, Ansible own: mitogen not found or CABINET_MITOGEN=0}"
mkdir -p build/molecule
rm -f build/molecule/*.result build/molecule/*-verify.xml

run_one() {
  local s=$1 start rc
  start=$(date +%s)
  echo "==> molecule test -s $s (log: build/molecule/$s.log)"
  # Molecule's own step lines get a time stamp, for scripts/molecule-report.py.
  NO_COLOR=1 molecule test -s "$s" 9>&- 2>&1 | while IFS= read -r line; do
    if [[ $line == INFO* ]]; then printf '@%(%s)T %s\n' -1 "$line"; else printf '%s\n' "$line"; fi
  done > "build/molecule/$s.log"
  rc=${PIPESTATUS[0]}
  echo "$s $rc $(( $(date +%s) - start ))" > "build/molecule/$s.result"
  if [ "$rc" -eq 0 ]; then echo "==> $s passed"; else echo "==> $s FAILED (exit $rc)"; fi
}

running=0
for s in "${scenarios[@]}"; do
  run_one "$s" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

failed=0
echo
echo "Molecule summary (Debian 12 and 13 in each scenario)"
printf '  %-18s %-8s %s\n' scenario result seconds
for s in "${scenarios[@]}"; do
  read -r _ rc secs < "build/molecule/$s.result" || { rc=99; secs=?; }
  if [ "$rc" -eq 0 ]; then result=passed; else result=FAILED; failed=$((failed + 1)); fi
  printf '  %-18s %-8s %s\n' "$s" "$result" "$secs"
done
echo
echo "Seconds per phase (kept in build/molecule/times.md and times.json)"
python3 scripts/molecule-report.py build/molecule || echo "(could not make the table)"
if [ "$failed" -gt 0 ]; then
  for s in "${scenarios[@]}"; do
    read -r _ rc _ < "build/molecule/$s.result"
    if [ "$rc" -ne 0 ]; then
      echo; echo "===== build/molecule/$s.log ====="; cat "build/molecule/$s.log"
    fi
  done
  echo "$failed scenario(s) failed"
  exit 1
fi
