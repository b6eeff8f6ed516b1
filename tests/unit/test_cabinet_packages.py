"""Unit tests for filter_plugins/cabinet_packages.py: install tasks skip apt only for what is
really installed, and anything the listing cannot vouch for goes to apt."""

import pytest
from ansible.errors import AnsibleFilterError

from cabinet_packages import FilterModule, installed_packages, packages_missing

# Lines of dpkg-query --show --showformat='${db:Status-Abbrev} ${Package}\n' (the abbreviation
# is three characters, the third a space unless an error flag is set).
LISTING = [
    "ii  postfix",
    "hi  held-but-installed",
    "rc  exim4",              # removed, its configuration files left
    "iU  half-unpacked",
    "iF  half-configured",
    "un  never-installed",
    "iiR reinstall-required",
    "ii  Not_A_Name",
    "garbage",
    "",
]


def test_only_installed_packages_count():
    assert installed_packages(LISTING) == {"postfix", "held-but-installed"}


@pytest.mark.parametrize("names, missing", [
    (["postfix"], []),
    (["postfix", "held-but-installed"], []),
    (["postfix", "exim4"], ["exim4"]),
    (["half-unpacked", "half-configured", "reinstall-required", "never-installed"],
     ["half-unpacked", "half-configured", "reinstall-required", "never-installed"]),
    (["brand-new"], ["brand-new"]),
    # What the listing cannot vouch for goes to apt, which decides as before.
    (["postfix=3.7.11-0+deb12u1", "postfix:amd64", "postfi*", "/tmp/postfix.deb"],
     ["postfix=3.7.11-0+deb12u1", "postfix:amd64", "postfi*", "/tmp/postfix.deb"]),
    ("postfix", []),
    ([], []),
])
def test_missing_packages(names, missing):
    assert packages_missing(names, LISTING) == missing


@pytest.mark.parametrize("listing", [None, "ii  postfix", {"postfix": 1}, 42])
def test_no_listing_means_every_package_goes_to_apt(listing):
    """A skipped listing (the validation play), an inventory's string or any other shape."""
    assert packages_missing(["postfix", "mailutils"], listing) == ["postfix", "mailutils"]


def test_a_bad_package_list_is_refused():
    with pytest.raises(AnsibleFilterError, match="list of package names"):
        packages_missing({"postfix": True}, LISTING)


def test_the_filter_is_registered():
    assert FilterModule().filters()["packages_missing"] is packages_missing


def test_every_install_task_of_the_roles_asks_the_listing_first():
    """Each apt task that installs (state present) skips only through packages_missing, with
    the same list it installs, and the listing comes from the preflight role."""
    from pathlib import Path

    import yaml
    from conftest import playbook_tasks

    root = Path(__file__).resolve().parents[2]

    found = 0
    for path in sorted(root.glob("roles/*/tasks/*.yml")):
        for task in playbook_tasks(yaml.safe_load(path.read_text(encoding="utf-8"))):
            apt = task.get("ansible.builtin.apt")
            if not isinstance(apt, dict) or apt.get("state") != "present":
                continue
            found += 1
            when = task.get("when")
            conditions = when if isinstance(when, list) else [when]
            name = str(apt["name"]).strip()
            assert name.startswith("{{ ") and name.endswith(" }}"), f"{path.name}: {task['name']}: name through a variable"
            listed = name[3:-3].strip()
            expected = f"{listed} | packages_missing(__cabinet_dpkg.stdout_lines | default(none)) | length > 0"
            assert expected in conditions, f"{path.name}: {task['name']}: when must hold {expected!r}, has {when!r}"
    assert found >= 17
    preflight = (root / "roles" / "cabinet_preflight" / "tasks" / "main.yml").read_text(encoding="utf-8")
    assert "register: __cabinet_dpkg" in preflight
