"""Password policy: long, varied, not obvious; lockout; no reuse; yescrypt; nobody locked out.

Audit checks read the files and stacks PAM uses. Lab checks (cabinet_lab: true) go through
PAM itself: chpasswd for the password stack, pamtester for authentication.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import admin_gets_in, not_applicable, run_playbook, run_unit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "filter_plugins"))
from cabinet_passwords import policy_entropy  # noqa: E402

ROLE = "password_policy"
AUDITED_GROUP = "cabinet_managed"
# The hash of a lab password (molecule/password_policy/prepare.yml gives it to cabinet-admin).
LAB_PASSWORD_HASH = ("$6$cabinetlab$QhVLeENiK2kHll.uIRWwvIYKGXC4jD52WAzwMkfm71DamF2zO5hmcS88kqJ"
                     ".4/UShlobTQVe2rGW1EVS4p/mI0")
USER = "cabinet-pwtest"


def pwquality(host) -> dict[str, str]:
    """Effective pwquality settings: pwquality.conf, then the drop-ins in name order."""
    text = host.run("cat /etc/security/pwquality.conf /etc/security/pwquality.conf.d/*.conf 2>/dev/null").stdout
    settings: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = line.partition("=")
        settings[key.strip()] = value.strip() or "set"
    return settings


def strong(length: int = 16) -> str:
    """A random password the policy accepts: 4 classes, no character twice in a row, no
    three-character sequence (pwquality's maxrepeat and maxsequence would refuse those)."""
    pools = ["abcdefghijkmnpqrstuvwxyz", "ABCDEFGHJKLMNPQRSTUVWXYZ", "23456789", "#%+=@^_~"]
    rng = secrets.SystemRandom()
    while True:
        chars = [rng.choice(pool) for pool in pools] + [rng.choice("".join(pools)) for _ in range(length - 4)]
        rng.shuffle(chars)
        if not any(a == b for a, b in zip(chars, chars[1:])) and not any(
                abs(ord(b) - ord(a)) == 1 and ord(c) - ord(b) == ord(b) - ord(a)
                for a, b, c in zip(chars, chars[1:], chars[2:])):
            return "".join(chars)


# ----------------------------------------------------------------------------- audit
def test_packages(host):
    for package in ("libpam-pwquality", "cracklib-runtime", "pamtester"):
        assert host.package(package).is_installed, package


def test_quality_rules_match_the_inventory(host, expect, evidence):
    settings = pwquality(host)
    evidence("Mots de passe exigés", f"{settings.get('minlen', '?')} caractères au moins, "
             f"{settings.get('minclass', '?')} types de caractères, mots du dictionnaire "
             f"{'refusés' if settings.get('dictcheck') == '1' else 'acceptés'}")
    assert int(settings["minlen"]) == expect("password_policy_min_length")
    assert int(settings["minclass"]) == expect("password_policy_min_classes")
    assert settings.get("dictcheck") == ("1" if expect("password_policy_dictcheck") else "0")
    assert settings.get("usercheck") == ("1" if expect("password_policy_usercheck") else "0")
    for credit in ("dcredit", "ucredit", "lcredit", "ocredit"):
        assert int(settings.get(credit, "0")) <= 0, f"{credit} lets shorter passwords through"
    assert ("enforce_for_root" in settings) == expect("password_policy_enforce_for_root")


def test_rules_live_in_debians_own_files(host, expect):
    """Where pam_pwquality, faillock(8), an administrator and the ANSSI BP-028 scanners
    (OpenSCAP reads only pwquality.conf and faillock.conf, and a stack without conf=) look;
    the files of earlier versions are gone, so nothing overrides them unseen."""
    main = host.file("/etc/security/pwquality.conf").content_string
    assert f"minlen = {expect('password_policy_min_length')}" in main.splitlines()
    for legacy in ("/etc/security/pwquality.conf.d/cabinet.conf", "/etc/security/cabinet-faillock.conf"):
        assert not host.file(legacy).exists, legacy
    auth = host.file("/etc/pam.d/common-auth").content_string
    assert "conf=" not in auth
    if expect("password_policy_faillock_enabled"):
        # The layout the scanner and pam_faillock(8) describe: the lock is checked by a
        # required preauth, so a locked account is refused even with the right password.
        assert any(line.split()[:4] == ["auth", "required", "pam_faillock.so", "preauth"] for line in auth.splitlines())
        assert f"deny = {expect('password_policy_faillock_deny')}" in host.file("/etc/security/faillock.conf").content_string
    if expect("password_policy_min_classes") == 4:
        settings = pwquality(host)
        assert all(settings.get(c) == "-1" for c in ("dcredit", "ucredit", "lcredit", "ocredit")), settings


def test_policy_reaches_the_entropy_threshold(host, expect):
    settings = pwquality(host)
    bits = policy_entropy(int(settings["minlen"]), int(settings["minclass"]))
    assert round(bits) >= expect("password_policy_min_entropy_bits"), f"the policy guarantees {bits} bits"


def test_stacks_hold_the_modules(host, expect):
    auth = host.file("/etc/pam.d/common-auth").content_string
    password = host.file("/etc/pam.d/common-password").content_string
    assert "pam_pwquality.so" in password
    assert password.index("pam_pwquality.so") < password.index("pam_unix.so")
    assert "yescrypt" in password.split("pam_unix.so", 1)[1].splitlines()[0]
    if expect("password_policy_faillock_enabled"):
        assert auth.index("pam_faillock.so preauth") < auth.index("pam_unix.so") < auth.index("pam_faillock.so authfail")
    else:
        assert "pam_faillock.so" not in auth
    if expect("password_policy_pwhistory_enabled"):
        line = next(l for l in password.splitlines() if "pam_pwhistory.so" in l)
        assert f"remember={expect('password_policy_pwhistory_remember')}" in line
        assert password.index("pam_pwhistory.so") < password.index("pam_unix.so")
    else:
        assert "pam_pwhistory.so" not in password


def test_every_session_gets_the_umask_of_login_defs(host, expect):
    """pam_umask nousergroups, last of the session stacks: login.defs' UMASK as written for
    every session, after Debian 13's own pam_umask (which turns 027 into 007 for accounts with
    a group of their own name; the lab's SSH test covers such an account)."""
    if not expect("password_policy_session_umask"):
        not_applicable("session umask disabled in this inventory")
    for stack in ("common-session", "common-session-noninteractive"):
        lines = [l.split() for l in host.file(f"/etc/pam.d/{stack}").content_string.splitlines()
                 if "pam_umask.so" in l and not l.lstrip().startswith("#")]
        assert lines and lines[-1][2:] == ["pam_umask.so", "nousergroups"], (stack, lines)
    wanted = next((l.split()[1] for l in host.file("/etc/login.defs").content_string.splitlines()
                   if l.split()[:1] == ["UMASK"] and len(l.split()) > 1), None)
    if wanted is None:
        # Debian 13's login.defs sets none until system_baseline does: pam_umask then keeps the
        # umask a session inherits, and there is no value to compare with.
        not_applicable("/etc/login.defs sets no UMASK (system_baseline sets it)")
    # A session through su (whose stack includes common-session), as nobody, read only: never
    # a person's account (its session would count as use for the inactive-account check). It
    # starts from 0077, so the umask it ends with is pam_umask's, not one it inherited.
    got = host.check_output("sh -c 'umask 0077; exec su --shell /bin/sh --command umask nobody'")
    assert int(got, 8) == int(wanted, 8), f"a session got {got}, login.defs says {wanted}"


def test_lockout_rules(host, expect, evidence):
    if not expect("password_policy_faillock_enabled"):
        evidence("Verrouillage après des échecs", "désactivé")
        not_applicable("lockout disabled in this inventory")
    conf = host.file("/etc/security/faillock.conf").content_string
    shown = dict(re.findall(r"^\s*(deny|unlock_time|fail_interval)\s*=\s*(\d+)", conf, re.M))
    evidence("Verrouillage après des échecs", f"{shown.get('deny', '?')} échecs en {shown.get('fail_interval', '?')} s : "
             f"compte bloqué {shown.get('unlock_time', '?')} s")
    assert f"deny = {expect('password_policy_faillock_deny')}" in conf
    assert f"unlock_time = {expect('password_policy_faillock_unlock_time')}" in conf
    assert f"fail_interval = {expect('password_policy_faillock_fail_interval')}" in conf
    assert ("even_deny_root" in conf) == expect("password_policy_faillock_even_deny_root")


def test_yescrypt_and_no_forced_expiry(host):
    defs = host.file("/etc/login.defs").content_string
    assert "\nENCRYPT_METHOD YESCRYPT" in defs
    assert "\nPASS_MAX_DAYS\t99999" in defs


def max_days(host, account: str) -> str:
    """Field 5 of the account's shadow entry: its maximum password age ('' when none)."""
    return host.check_output(f"getent shadow {shlex.quote(account)} | cut -d: -f5")


def test_failed_login_watch_is_armed(host, expect, evidence):
    """A burst of failed logins reaches the MSP and the incident register: the watch runs every
    15 minutes with the inventory's threshold, and its last run did not fail."""
    if not expect("password_policy_login_watch_enabled"):
        evidence("Surveillance des échecs de connexion", "désactivée")
        not_applicable("the failed-login watch is turned off in this inventory")
    settings = json.loads(host.file("/etc/cabinet/login-watch.json").content_string)
    evidence("Surveillance des échecs de connexion", f"alerte au-delà de {settings['failures']} échecs en "
             f"{settings['window_minutes']} min, vérifiée toutes les 15 min")
    assert settings["failures"] == expect("password_policy_login_burst_failures")
    assert settings["window_minutes"] == expect("password_policy_login_burst_minutes")
    timer = host.service("cabinet-login-watch.timer")
    assert timer.is_enabled and timer.is_running
    assert host.run("systemctl is-failed --quiet cabinet-login-watch.service").rc != 0, "the watch's last run failed"


def test_privileged_accounts_have_a_maximum_age(host, expect):
    days = expect("password_policy_privileged_max_days")
    listed = expect("password_policy_privileged_accounts")
    if not listed:
        not_applicable("the inventory lists no privileged account")
    present = [a for a in listed if host.user(a).exists]
    if not present:
        # The role leaves accounts that do not exist on a host alone.
        not_applicable("none of the privileged accounts listed in the inventory exists on this host")
    for account in present:
        assert max_days(host, account) == (str(days) if days > 0 else "99999"), account


# ----------------------------------------------------------------------------- lab
@pytest.fixture(scope="module")
def account(lab):
    lab.run(f"userdel -r {USER} 2>/dev/null")
    assert lab.run(f"useradd -m -s /bin/bash {USER}").rc == 0
    yield USER
    lab.run(f"faillock --user {USER} --reset; userdel -r {USER}")


def set_password(host, user: str, password: str):
    return host.run(f"echo {shlex.quote(user + ':' + password)} | chpasswd")


# Too short; two classes only; 12 characters of 3 classes (Debian's defaults accept it: only
# the role's minclass refuses it); a repeated character (only the role's maxrepeat refuses it).
@pytest.mark.parametrize("weak", ["Court1!", "motdepasse-cabinet", "Mxk7Wq2Lp9Rt", "aaaaBBBB1111!!!!"])
def test_weak_password_refused_for_a_user_and_root(lab, account, weak):
    for user in (account, "root"):
        before = lab.check_output(f"getent shadow {user} | cut -d: -f2")
        result = set_password(lab, user, weak)
        assert result.rc != 0, f"{user}: the weak password {weak!r} was accepted"
        assert "BAD PASSWORD" in result.stderr or "pwquality" in result.stderr, result.stderr
        assert lab.check_output(f"getent shadow {user} | cut -d: -f2") == before


def test_compliant_password_accepted_and_hashed_with_yescrypt(lab, account):
    for user in (account, "root"):
        password = strong()
        result = set_password(lab, user, password)
        assert result.rc == 0, f"{user}: {result.stderr}"
        assert lab.check_output(f"getent shadow {user} | cut -d: -f2").startswith("$y$")
        good = lab.run("echo %s | pamtester login %s authenticate", password, user)
        assert good.rc == 0, f"{user}: {good.stderr}"


def test_recent_password_refused(lab, account, expect):
    if not expect("password_policy_pwhistory_enabled"):
        not_applicable("history disabled in this inventory")
    first, second = strong(), strong()
    assert set_password(lab, account, first).rc == 0
    assert set_password(lab, account, second).rc == 0
    again = set_password(lab, account, first)
    assert again.rc != 0, "a recently used password was accepted again"
    assert "used" in again.stderr.lower() or "history" in again.stderr.lower(), again.stderr


def test_failures_lock_the_account_and_a_reset_restores_it(lab, account, expect):
    if not expect("password_policy_faillock_enabled"):
        not_applicable("lockout disabled in this inventory")
    password = strong()
    assert set_password(lab, account, password).rc == 0
    lab.run(f"faillock --user {account} --reset")
    for _ in range(expect("password_policy_faillock_deny")):
        assert lab.run("echo wrong-password | pamtester login %s authenticate", account).rc != 0
    shown = lab.check_output(f"faillock --user {account}")
    assert len([l for l in shown.splitlines() if l.rstrip().endswith(" V")]) >= expect("password_policy_faillock_deny"), shown
    locked = lab.run("echo %s | pamtester login %s authenticate", password, account)
    assert locked.rc != 0, "the right password still opened a locked account"
    # Other accounts stay usable while this one is locked: the anti-lockout proof
    # authenticates a fresh account through login (and sudo) right now.
    assert lab.run("/usr/local/sbin/cabinet-pam-check").rc == 0
    assert not [l for l in lab.check_output("faillock --user root").splitlines() if l.rstrip().endswith(" V")], \
        "root has recorded failures: the test must not touch the admin account"
    lab.check_output(f"faillock --user {account} --reset")
    unlocked = lab.run("echo %s | pamtester login %s authenticate", password, account)
    assert unlocked.rc == 0, unlocked.stderr


def test_a_burst_of_failed_logins_alerts_and_opens_an_incident(lab, expect):
    """Real failures through PAM (pamtester, as sshd or login would fail them) on throwaway
    accounts, up to the threshold: the watch alerts and the register holds one new incident.
    (Delivery of an alert to the MSP is the alerting scenario's proof; this scenario has no
    mail sink, so the alert waits in the host's queue.)"""
    if not expect("password_policy_login_watch_enabled"):
        not_applicable("the failed-login watch is turned off in this inventory")
    needed, deny = expect("password_policy_login_burst_failures"), expect("password_policy_faillock_deny")
    users = [f"cabinet-burst{i}" for i in range(-(-needed // deny))]  # each fails up to faillock's limit
    started, epoch = lab.check_output("date -u '+%Y-%m-%dT%H:%M:%SZ %s'").split()
    lab.check_output("rm -f /var/lib/cabinet/login-watch/state.json")  # no burst left open from before
    try:
        for user in users:
            lab.run(f"userdel -r {user} 2>/dev/null")
            assert lab.run(f"useradd -m -s /bin/bash {user}").rc == 0
            assert set_password(lab, user, strong()).rc == 0
            for _ in range(deny):
                assert lab.run("echo wrong-password | pamtester login %s authenticate", user).rc != 0
        assert run_unit(lab, "cabinet-login-watch.service", timeout=300) == "success"
        opened = [i for i in json.loads(lab.check_output("/usr/local/sbin/cabinet-incident list --open --json"))
                  if i["kind"] == "failed_logins" and i["detected"] >= started]
        assert len(opened) == 1, f"expected one new failed-login incident: {opened}"
        assert all(user in opened[0]["details"] for user in users), opened[0]["details"]
        alerted = lab.run("journalctl -q --no-pager -o cat SYSLOG_IDENTIFIER=cabinet-alert CABINET_PRACTICE=password_policy "
                          f"--since=@{epoch}")
        assert alerted.rc == 0 and "failed logins in" in alerted.stdout, "the alert is not in the journal"
        # Run again at once: the same burst, no second incident.
        assert run_unit(lab, "cabinet-login-watch.service", timeout=300) == "success"
        again = [i for i in json.loads(lab.check_output("/usr/local/sbin/cabinet-incident list --open --json"))
                 if i["kind"] == "failed_logins" and i["detected"] >= started]
        assert len(again) == 1, "the same burst opened a second incident"
    finally:
        for user in users:
            lab.run(f"faillock --user {user} --reset; userdel -r {user}")


def test_anti_lockout_proof_passes(lab):
    result = lab.run("/usr/local/sbin/cabinet-pam-check")
    assert result.rc == 0, result.stderr
    services = "login and sudo" if lab.package("sudo").is_installed else "login"
    assert f"{services} accept a correct password and refuse a wrong one" in result.stdout


# ----------------------------------------------------------------------------- lab: runs of the role
COMMON = ("common-auth", "common-account", "common-password", "common-session", "common-session-noninteractive")
PAM_STATE = ("seen", "auth", "account", "password", "session", "session-noninteractive")


def converge(lab, request, *extra: str, login: list[str] | None = None,
             own_strategy: bool = False) -> subprocess.CompletedProcess:
    """playbooks/password_policy.yml on this lab host (conftest.run_playbook).

    own_strategy: Ansible's own strategy, whatever the caller uses. A new sudo for every task
    is the case a PAM change can break, and mitogen's one privileged session would hide it, so
    the runs that change PAM as the admin use it. (The SSH connection itself is shared by the
    tasks, as in the MSP's runs; ``admin_gets_in`` opens a new SSH login after every change.)
    The other runs (as root, or only validating) keep the caller's strategy,
    which decides nothing they test."""
    return run_playbook("password_policy.yml", lab, request, *extra, login=login, own_strategy=own_strategy)


def recap_changed(run: subprocess.CompletedProcess, name: str) -> int:
    line = next(l for l in run.stdout.splitlines() if l.startswith(name + " ") and "changed=" in l)
    return int(line.split("changed=")[1].split()[0])


def snapshot(lab) -> dict[str, str]:
    """The PAM stacks and pam-auth-update's own record of them."""
    files = [f"/etc/pam.d/{f}" for f in COMMON] + [f"/var/lib/pam/{f}" for f in PAM_STATE]
    return {f: lab.file(f).content_string for f in files}


def assert_rolled_back(lab, before: dict[str, str], profile: str) -> None:
    """After the rescue: everything is as before, except that pam-auth-update now lists the
    rolled-back profile in /var/lib/pam/seen.

    That one difference is expected, and required. `pam-auth-update --disable X` records X
    as seen and not enabled: the admin's decision, which keeps a package's later
    `pam-auth-update --package` from enabling this broken `Default: yes` profile again. A
    rescue that put the old seen back would make X look new, and the next package update
    would enable it and break authentication once more. (An earlier version of these tests
    wanted seen identical to before; that expectation was wrong.) The stacks, and the
    enabled profiles pam-auth-update records with them, must be exactly as before."""
    after = snapshot(lab)
    seen = "/var/lib/pam/seen"
    assert {f: t for f, t in after.items() if f != seen} == {f: t for f, t in before.items() if f != seen}, \
        "the PAM stacks or the stacks pam-auth-update recorded differ from before the run"
    assert profile not in before[seen].split(), f"the test's premise: {profile} must be new before the run"
    assert sorted(after[seen].split()) == sorted(before[seen].split() + [profile]), \
        f"/var/lib/pam/seen should be as before plus {profile} (seen and disabled): {after[seen]!r}"


def enabled_profiles(lab) -> set[str]:
    return set(lab.check_output("sed -n 's/^Module: //p' /var/lib/pam/auth /var/lib/pam/account "
                                "/var/lib/pam/password /var/lib/pam/session /var/lib/pam/session-noninteractive").split())


def install_profile(lab, name: str, text: str) -> None:
    lab.check_output(f"printf %s {shlex.quote(text)} > /usr/share/pam-configs/{name}")


def remove_profiles(lab, *names: str) -> None:
    lab.run("rm -f " + " ".join(f"/usr/share/pam-configs/{n}" for n in names))
    lab.run("pam-auth-update --package --remove " + " ".join(names))


def assert_pam_auth_update_consistent(lab, stale: str) -> None:
    """pam-auth-update still manages the stacks: it agrees with them (a run regenerates
    identical files, no "local modifications"), the rolled-back profile is not enabled, and a
    package's later profile is still applied."""
    assert stale not in enabled_profiles(lab), f"{stale} is still enabled in /var/lib/pam"
    assert stale in lab.file("/var/lib/pam/seen").content_string.split(), \
        f"{stale} is not recorded as seen: the next package update would enable it again"
    before = snapshot(lab)
    again = lab.run("pam-auth-update --package")
    assert again.rc == 0 and "Local modifications" not in again.stderr, again.stderr
    assert snapshot(lab) == before, "pam-auth-update --package rewrote the stacks: its state did not match them"
    assert stale not in enabled_profiles(lab), f"pam-auth-update --package enabled {stale} again"
    install_profile(lab, "lab-later", "Name: lab: a later package's profile\nDefault: yes\nPriority: 0\n"
                                      "Session-Type: Additional\nSession:\n\toptional\tpam_env.so\n")
    try:
        later = lab.run("pam-auth-update --package")
        assert later.rc == 0 and "Local modifications" not in later.stderr, later.stderr
        assert "lab-later" in enabled_profiles(lab), "a later Debian profile update was not applied"
        assert "pam_env.so" in lab.file("/etc/pam.d/common-session").content_string
    finally:
        remove_profiles(lab, "lab-later")


def test_admin_still_gets_in_after_a_pam_change(lab, lab_admin, admin_login, request):
    """The run connects as the admin (sudo), changes PAM, and proves the admin still gets in."""
    assert admin_gets_in(lab, lab_admin) == []
    try:
        changed = converge(lab, request, "-e", '{"password_policy_pwhistory_enabled": false}', login=admin_login,
                           own_strategy=True)
        assert changed.returncode == 0, changed.stdout[-3000:]
        assert f"{lab_admin} still gets in: account stacks accept it, su opens a session, sudo -n true works" \
            in changed.stdout, "the run did not prove the admin account it connects as"
        assert "pam_pwhistory.so" not in lab.file("/etc/pam.d/common-password").content_string, "PAM did not change"
        assert admin_gets_in(lab, lab_admin) == []
    finally:
        back = converge(lab, request, login=admin_login)
        assert back.returncode == 0, back.stdout[-3000:]
    assert admin_gets_in(lab, lab_admin) == []


def test_a_profile_that_locks_out_only_the_admin_is_rolled_back(lab, lab_admin, admin_login, request):
    """Fault: a package's new default profile refuses the admin account (pam_access) and no one
    else, so the throwaway account's proof passes. The admin's proof must fail the run and the
    rollback must give the admin its way in back, through pam-auth-update. The role runs as the
    admin, through sudo: once the change is made, a new sudo is refused, so the change, the
    proof and the first restoring must happen in one root process (cabinet-pam-check --apply)."""
    lab.check_output(f"echo '-:{lab_admin}:ALL' > /etc/security/lab-deny-admin.conf")
    install_profile(lab, "lab-deny-admin", "Name: lab: refuses the admin account\nDefault: yes\nPriority: 0\n"
                    "Account-Type: Additional\nAccount:\n\trequired\tpam_access.so accessfile=/etc/security/lab-deny-admin.conf\n")
    before = snapshot(lab)
    try:
        run = converge(lab, request, "-e", '{"password_policy_pwhistory_enabled": false}', login=admin_login,
                           own_strategy=True)
        assert run.returncode != 0, "the run passed although the admin account was locked out"
        assert "did not pass the authentication proof" in run.stdout, run.stdout[-3000:]
        assert f"{lab_admin}: the sshd account stack refuses it" in run.stdout, run.stdout[-3000:]
        assert_rolled_back(lab, before, "lab-deny-admin")
        assert admin_gets_in(lab, lab_admin) == []
        assert_pam_auth_update_consistent(lab, "lab-deny-admin")
    finally:
        remove_profiles(lab, "lab-deny-admin")
        lab.run("rm -f /etc/security/lab-deny-admin.conf")
        restored = converge(lab, request)
        assert restored.returncode == 0, restored.stdout[-3000:]


def test_a_profile_that_breaks_authentication_is_rolled_back(lab, request):
    """Fault: a package's new default profile (Default: yes, not yet seen) breaks
    authentication; the role's pam-auth-update call enables it, as Debian does. The proof
    fails, and the rollback goes through pam-auth-update: the stacks and the enabled profiles
    are as before, the profile is seen and not enabled, and later profile updates still apply."""
    install_profile(lab, "lab-broken", "Name: lab: breaks authentication\nDefault: yes\nPriority: 900\n"
                    "Auth-Type: Primary\nAuth:\n\trequisite\tpam_deny.so\n")
    before = snapshot(lab)
    try:
        run = converge(lab, request, "-e", '{"password_policy_pwhistory_enabled": false}')
        assert run.returncode != 0, "the run should have failed its anti-lockout proof"
        assert "did not pass the authentication proof" in run.stdout, run.stdout[-3000:]
        assert_rolled_back(lab, before, "lab-broken")
        assert lab.run("/usr/local/sbin/cabinet-pam-check").rc == 0, "authentication broken after the rollback"
        assert_pam_auth_update_consistent(lab, "lab-broken")
    finally:
        remove_profiles(lab, "lab-broken")
        restored = converge(lab, request)
        assert restored.returncode == 0, restored.stdout[-3000:]


def test_aging_the_connecting_admin_is_refused_before_any_change(lab, lab_admin, admin_login, request):
    """inventories/example before issue 12: the admin Ansible connects as, with an old
    password, given a 365-day maximum. The run must stop in its validation, change nothing."""
    lab.check_output(f"chage -d 2020-01-01 {lab_admin}")
    before = lab.check_output(f"getent shadow {lab_admin}")
    try:
        run = converge(lab, request, "-e", json.dumps({"password_policy_privileged_accounts": [lab_admin],
                                                       "password_policy_privileged_max_days": 365}), login=admin_login)
        assert run.returncode != 0, "the run aged the account it connects as"
        assert f"{lab_admin} is an account Ansible connects as" in run.stdout, run.stdout[-3000:]
        assert "password_policy_privileged_accept_lockout" in run.stdout
        assert recap_changed(run, lab.inventory_name) == 0
        assert lab.check_output(f"getent shadow {lab_admin}") == before
        assert admin_gets_in(lab, lab_admin) == []
    finally:
        lab.check_output(f"chage -d $(date -u +%F) -M -1 {lab_admin}")


def test_a_maximum_age_left_on_the_connecting_admin_is_removed(lab, lab_admin, admin_login, request):
    """inventories/example before issue 12 gave the admin Ansible connects as a 365-day
    maximum; the example changed, but the hosts it ran on kept the maximum, and the day it
    passes the MSP is locked out. A run that does not age that account on purpose removes it."""
    lab.check_output(f"chage -d $(date -u +%F) -M 365 {lab_admin}")
    try:
        run = converge(lab, request, login=admin_login)
        assert run.returncode == 0, run.stdout[-3000:]
        assert max_days(lab, lab_admin) == "", "the admin Ansible connects as still has a maximum password age"
        assert recap_changed(run, lab.inventory_name) >= 1
        assert admin_gets_in(lab, lab_admin) == []
    finally:
        lab.check_output(f"chage -M -1 {lab_admin}")


def test_an_account_that_would_expire_at_once_is_refused_unless_accepted(lab, request):
    old = "cabinet-pwold"
    lab.run(f"userdel -r {old} 2>/dev/null")
    # A person's account with a password (an account without one is refused for that reason
    # first), last changed in 2020.
    lab.check_output(f"useradd -m -s /bin/bash -p {shlex.quote(LAB_PASSWORD_HASH)} {old} && chage -d 2020-01-01 {old}")
    before = lab.check_output(f"getent shadow {old}")
    aging = {"password_policy_privileged_accounts": [old], "password_policy_privileged_max_days": 365}
    try:
        run = converge(lab, request, "-e", json.dumps(aging))
        assert run.returncode != 0, "the run expired an account at once"
        assert f"the password of {old} was last changed on 2020-01-01" in run.stdout, run.stdout[-3000:]
        assert "it would expire at once" in run.stdout
        assert recap_changed(run, lab.inventory_name) == 0
        assert lab.check_output(f"getent shadow {old}") == before
        accepted = converge(lab, request, "-e", json.dumps({**aging, "password_policy_privileged_accept_lockout": [old]}))
        assert accepted.returncode == 0, accepted.stdout[-3000:]
        assert max_days(lab, old) == "365"
    finally:
        lab.run(f"userdel -r {old}")


def test_failed_proof_restores_the_previous_pam_files(lab, request):
    """Fault: common-auth edited by hand, so pam-auth-update cannot apply a change. The run
    must fail loudly and leave PAM exactly as it was, still authenticating.

    The edit is a module line inside the block pam-auth-update manages: it then reports
    "Local modifications" and writes nothing, so faillock stays in the stacks although this
    run turns it off. (A comment appended after that block, as this test once did, is not a
    local modification: pam-auth-update keeps it and applies the change, and the run rightly
    succeeds. The old test only failed the run because `-e password_policy_faillock_enabled=false`
    passed the string "false", which the role took for true.)"""
    lab.check_output("sed -i '/^# end of pam-auth-update config/i auth\\toptional\\t\\t\\tpam_permit.so "
                     "# edited by hand for the anti-lockout test' /etc/pam.d/common-auth")
    assert "edited by hand for the anti-lockout test" in lab.file("/etc/pam.d/common-auth").content_string
    assert "pam_faillock.so" in lab.file("/etc/pam.d/common-auth").content_string, "the test's premise: faillock is on"
    before = snapshot(lab)
    try:
        run = converge(lab, request, "-e", '{"password_policy_faillock_enabled": false}')
        assert run.returncode != 0, "the run should have failed its anti-lockout proof"
        assert "did not pass the authentication proof" in run.stdout, run.stdout[-3000:]
        assert "pam-auth-update did not produce the stacks asked for" in run.stdout, run.stdout[-3000:]
        assert snapshot(lab) == before, "the previous PAM files (or pam-auth-update's state) were not put back"
        assert lab.run("/usr/local/sbin/cabinet-pam-check").rc == 0, "authentication broken after the restore"
    finally:
        lab.run("sed -i '/edited by hand for the anti-lockout test/d' /etc/pam.d/common-auth")
        lab.run("pam-auth-update --package --force --enable cabinet-faillock cabinet-faillock-notify cabinet-pwhistory")
        restored = converge(lab, request)
        assert restored.returncode == 0, restored.stdout[-3000:]
