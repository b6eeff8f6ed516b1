#!/usr/bin/env bash
# make ee / make ee-test: the execution environment that AWX (or ansible-navigator) runs the
# toolkit in, built from execution-environment.yml, then proven against the demo practice.
#   scripts/ee.sh build    ansible-builder 3 with podman -> localhost/cabinet-hardening-ee:latest
#   scripts/ee.sh test     site.yml --check inside that image, with ansible-runner (as AWX runs a
#                          job), against the demo practice over SSH as msp-admin (make demo first)
set -euo pipefail
cd "$(dirname "$0")/.."
image=${CABINET_EE_IMAGE:-localhost/cabinet-hardening-ee:latest}
mkdir -p build/ee

case "${1:-build}" in
  build)
    podman image exists localhost/cabinet-debian:bookworm || bash scripts/build-image.sh bookworm
    echo "==> Building $image with ansible-builder (log: build/ee/build.log)"
    start=$(date +%s)
    rm -rf build/ee/context build/ee/ca
    # Certificate authorities the image must trust besides Debian's (execution-environment.yml):
    # none unless asked, since every job of the MSP's AWX would trust them. Behind a
    # TLS-inspecting proxy: CABINET_EE_CA_DIR=/usr/local/share/ca-certificates (its *.crt, in
    # subfolders too). Each one is listed with its fingerprint.
    mkdir -p build/ee/ca
    ca_dir=${CABINET_EE_CA_DIR:-}
    if [ -n "$ca_dir" ]; then
      [ -d "$ca_dir" ] || { echo "ERROR: CABINET_EE_CA_DIR=$ca_dir is not a folder" >&2; exit 2; }
      n=0
      while IFS= read -r -d '' crt; do
        n=$((n + 1))
        cp "$crt" "build/ee/ca/$n-$(basename "$crt")"
        echo "    trusting $(basename "$crt"): $(openssl x509 -noout -subject -fingerprint -sha256 -in "$crt" | tr '\n' ' ')"
      done < <(find "$ca_dir" -type f -name '*.crt' -print0 | sort -z)
      [ "$n" -gt 0 ] || echo "    CABINET_EE_CA_DIR=$ca_dir holds no *.crt: no authority added"
    fi
    echo "Certificate authorities added by scripts/ee.sh (CABINET_EE_CA_DIR); none when empty." > build/ee/ca/README
    if ! ansible-builder build -f execution-environment.yml -c build/ee/context -t "$image" \
        --container-runtime podman -v 2 > build/ee/build.log 2>&1; then
      tail -40 build/ee/build.log; echo "ERROR: the execution environment could not be built" >&2; exit 1
    fi
    echo "==> $image built in $(( $(date +%s) - start )) s: $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec) bytes"
    podman run --rm "$image" ansible --version 2>/dev/null | head -1
    podman run --rm "$image" ansible-galaxy collection list 2>/dev/null \
      | grep -E '^(ansible\.posix|community\.general|containers\.podman) ' | sed 's/^/    /'
    ;;
  test)
    podman image exists "$image" || { echo "ERROR: $image is missing: make ee" >&2; exit 1; }
    for c in demo-server demo-workstation demo-offsite; do
      [ "$(podman inspect --format '{{.State.Running}}' "$c" 2>/dev/null)" = true ] \
        || { echo "ERROR: the demo practice is not running ($c): make demo first" >&2; exit 1; }
    done
    python3 scripts/demo_inventory.py ee build/ee/run
    echo "==> site.yml --check inside $image, against the demo practice over SSH (log: build/ee/test.log)"
    start=$(date +%s)
    rc=0
    # As AWX runs a job: ansible-runner starts the EE with the project and inventory mounted.
    # The container joins the demo's network, where the practice's machines have their names.
    ansible-runner run build/ee/run -p playbooks/site.yml --cmdline=--check \
      --process-isolation --process-isolation-executable podman --container-image "$image" \
      --container-option=--network=cabinet-demo --container-option=--user=root \
      > build/ee/test.log 2>&1 || rc=$?
    sed -n '/PLAY RECAP/,/^$/p' build/ee/test.log
    echo "==> check mode inside the execution environment: exit $rc in $(( $(date +%s) - start )) s"
    if [ "$rc" -ne 0 ]; then tail -60 build/ee/test.log; exit "$rc"; fi
    ;;
  *) echo "usage: ee.sh build|test" >&2; exit 2 ;;
esac
