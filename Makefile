# cabinet-hardening: one entry point for set-up, tests and the demo.
#   make demo   start a demo practice in containers, apply every practice, audit it
#   make test   yamllint, ansible-lint, unit tests, every Molecule scenario (Debian 12 and 13)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
BIN       := $(abspath $(VENV))/bin
PYTHON    ?= python3
RELEASES  := bookworm trixie
# Empty: every scenario, longest first (scripts/molecule-all.sh orders them).
SCENARIOS ?=
# Mitogen makes runs 3-5x faster; CABINET_MITOGEN=0 runs with Ansible's own strategy.
CABINET_MITOGEN ?= 1
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)
export PY_COLORS := 0
export ANSIBLE_NOCOLOR := 1

# Mitogen's strategy, looked up when a recipe runs, not when make reads this file: in a fresh
# clone the venv (and mitogen in it) only exists once `setup` has run, in the same make. (A
# lookup at parse time left every CI run from a fresh clone on Ansible's own strategy until
# session 6.) It is mitogen_linear without mitogen's CPU pinning, which put every Ansible
# process and all they start on one of this machine's two CPUs
# (scripts/strategy_plugins/cabinet_mitogen_linear.py). scripts/molecule-all.sh prints it.
STRATEGY_PLUGINS := $(abspath scripts/strategy_plugins)
WITH_MITOGEN = if [ "$(CABINET_MITOGEN)" = 1 ] && $(PY) -c 'import ansible_mitogen' 2>/dev/null; then export ANSIBLE_STRATEGY_PLUGINS="$(STRATEGY_PLUGINS)" ANSIBLE_STRATEGY=cabinet_mitogen_linear; else unset ANSIBLE_STRATEGY ANSIBLE_STRATEGY_PLUGINS; fi;

.PHONY: help setup venv host images lint unit checks molecule converge verify idempotence destroy test demo demo-clean demo-mail demo-power-cut demo-power-back demo-virus demo-restore demo-tour-test report report-test fleet bench ee ee-test clean

help: ## List the targets
	@grep -E '^[a-z -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

setup: venv host images ## Everything the tests and the demo need (idempotent)

venv: $(VENV)/.installed ## Python virtual environment with Ansible, Molecule, testinfra, linters
$(VENV)/.installed: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "ERROR: $(PYTHON) not found; install python3 and python3-venv" >&2; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "ERROR: Python's venv/ensurepip is missing; on Debian: apt-get install python3-venv" >&2; exit 1; }
	@echo "==> Creating $(VENV) from requirements.txt"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

host: ## Host packages (podman, runc, debootstrap, ...) and /etc/containers/containers.conf
	@bash scripts/setup-host.sh

images: host ## Debian 12 and 13 base images (rebuilt only when their recipe changes)
	@pids=(); for r in $(RELEASES); do bash scripts/build-image.sh $$r & pids+=($$!); done; \
	 failed=0; for p in "$${pids[@]}"; do wait $$p || failed=1; done; \
	 if [ $$failed -ne 0 ]; then echo "ERROR: a base image could not be built (see above)" >&2; exit 1; fi

lint: venv ## yamllint and ansible-lint (production profile)
	@echo "==> yamllint"; yamllint --strict .
	@echo "==> ansible-lint"; ansible-lint --offline

unit: venv ## pytest tests/unit
	@echo "==> unit tests"; $(WITH_MITOGEN) pytest -q -p no:cacheprovider -n 2 --dist loadgroup tests/unit

# lint uses one CPU for a minute and a half: it runs beside the unit tests, which then finish
# on the CPU it leaves (session 10: about 40 s of `make test`). Its output is printed after
# theirs, and either failing fails the target.
checks: venv ## lint and unit tests side by side
	@mkdir -p build; $(MAKE) --no-print-directory lint > build/lint.log 2>&1 & lint=$$!; \
	 unit=0; $(MAKE) --no-print-directory unit || unit=$$?; \
	 linted=0; wait $$lint || linted=$$?; cat build/lint.log; \
	 if [ $$linted -ne 0 ]; then echo "ERROR: lint failed (above)" >&2; fi; \
	 if [ $$unit -ne 0 ]; then echo "ERROR: unit tests failed (above the lint output)" >&2; fi; \
	 [ $$linted -eq 0 ] && [ $$unit -eq 0 ]

molecule: setup ## Every Molecule scenario, on Debian 12 and 13, with a summary
	@$(WITH_MITOGEN) bash scripts/molecule-all.sh $(SCENARIOS)

# A developer's loop on kept containers: converge once, then verify (or idempotence) as often as
# needed; destroy when done. SCENARIOS names one or more scenarios.
converge verify idempotence destroy: setup
	@test -n "$(SCENARIOS)" || { echo "ERROR: name the scenario(s): make $@ SCENARIOS=backup" >&2; exit 2; }
	@$(WITH_MITOGEN) for s in $(SCENARIOS); do echo "==> molecule $@ -s $$s"; molecule $@ -s $$s; done

test: setup checks molecule ## The whole test suite (what CI runs)
	@echo "==> make test: all passed"

demo: setup ## Start the demo practice, apply playbooks/site.yml, print the audit
	@$(WITH_MITOGEN) bash scripts/demo.sh up

# The compliance report (tests/report/build.py): the suites run read-only against each
# inventory; reports/<client>/<date-time>/ gets rapport.html and .pdf (French, for the
# practice), report.json and junit.xml; reports/index.html is the fleet page. INVENTORY names
# one inventory folder or several (space-separated); the exit status is 1 if any gap.
INVENTORY ?=
report: venv ## Compliance report: make report INVENTORY="inventories/<client> [...]"
	@test -n "$(INVENTORY)" || { echo "ERROR: name the inventory: make report INVENTORY=inventories/<client>" >&2; exit 2; }
	@$(WITH_MITOGEN) $(PY) tests/report/build.py run $(foreach i,$(INVENTORY),--inventory $(i))

# The report's live test against the demo practice (it breaks a practice, opens an incident and
# stops demo-workstation for a while, then puts all back): after make demo. CI runs the same
# test in the alerting scenario; the demo's own run is too long for CI's budget (README).
report-test: venv ## The compliance report's live test on the demo practice (after make demo)
	@$(WITH_MITOGEN) $(BIN)/pytest -p no:cacheprovider -q -rA tests/report/test_live_report.py --ansible-inventory=inventories/demo/hosts.yml

# The fleet (scripts/fleet.py): a playbook applied to every client folder of CLIENTS, PARALLEL
# clients at a time; per-client logs and results, a summary table, exit 1 if any client failed.
# ARGS go to ansible-playbook (--check --diff, --tags backup, --ask-vault-pass...).
CLIENTS  ?=
PLAYBOOK ?= playbooks/site.yml
PARALLEL ?= 4
ARGS     ?=
fleet: venv ## Every client: make fleet CLIENTS=<folder of inventories> [PLAYBOOK=...] [PARALLEL=4] [ARGS="--check"]
	@test -n "$(CLIENTS)" || { echo "ERROR: name the folder of client inventories: make fleet CLIENTS=clients/" >&2; exit 2; }
	@$(WITH_MITOGEN) $(PY) scripts/fleet.py "$(CLIENTS)" --playbook "$(PLAYBOOK)" --parallel "$(PARALLEL)" $(if $(ARGS),-- $(ARGS))

# The controller's cost (scripts/bench.py): idempotent re-runs of site.yml on 1, 4 and 8 small
# practices (containers), over SSH with and without mitogen; a benchmark, not a test (README).
bench: setup ## Controller CPU and wall time per host-task, with and without mitogen (about 30 min)
	@$(PY) scripts/bench.py $(ARGS)

# The execution environment for AWX / ansible-navigator (execution-environment.yml), and its
# proof: site.yml --check inside it, with ansible-runner, against the demo practice over SSH.
ee: venv images ## Build the execution environment image (ansible-builder, podman)
	@bash scripts/ee.sh build

ee-test: venv ## site.yml --check inside the execution environment against the demo (after make demo, make ee)
	@bash scripts/ee.sh test

# The guided tour make demo ends with (scripts/tour.py): each step on the demo's lab machines
# only; tests/demo/test_tour.py runs every one of them in CI on Molecule's labs.
TOUR_INVENTORY ?= build/inventories/demo/hosts.yml
LAST ?= 20
demo-mail demo-power-cut demo-power-back demo-virus demo-restore: venv ## The tour's steps (after make demo): make demo-mail, ...
	@$(PY) scripts/tour.py $(@:demo-%=%) --inventory $(TOUR_INVENTORY) $(if $(filter demo-mail,$@),--last $(LAST))

demo-tour-test: venv ## Every command of the tour's guide, run on the demo (after make demo)
	@$(BIN)/pytest -p no:cacheprovider -q -rA tests/demo/test_tour.py --ansible-inventory=$(TOUR_INVENTORY)

demo-clean: ## Remove the demo practice's containers and network
	@$(WITH_MITOGEN) bash scripts/demo.sh clean

clean: demo-clean ## Remove the demo and the virtual environment (images and caches stay)
	rm -rf $(VENV)
