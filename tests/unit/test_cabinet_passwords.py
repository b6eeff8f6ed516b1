"""Unit tests for filter_plugins/cabinet_passwords.py (CNIL 2022-100 / ANSSI PG-078 method)."""

import math

import pytest
from ansible.errors import AnsibleFilterError

from cabinet_passwords import (FilterModule, password_entropy, password_weaknesses, policy_entropy,
                               secret_problem)


@pytest.mark.parametrize("password, alphabet", [
    ("abcdefgh", 26),
    ("ABCDEFGH", 26),
    ("12345678", 10),
    ("abcdEFGH", 52),
    ("abcdEF12", 62),
    ("abcdEF1!", 99),
    ("éèàçùâêî", 32),
    ("aé", 58),
    ("a b", 63),          # a space is a special character
])
def test_entropy_is_length_times_log2_of_the_classes_used(password, alphabet):
    assert password_entropy(password) == round(len(password) * math.log2(alphabet), 1)


def test_cnil_examples():
    # CNIL 2022-100: 12 characters of the four classes, or 14 of upper, lower and digits: 80 bits.
    assert round(password_entropy("Tr0ub4dor&3x")) == 80
    assert round(password_entropy("Tr0ub4dor3xQz")) < 80 < round(password_entropy("Tr0ub4dor3xQzW"))


@pytest.mark.parametrize("value", ["", None])
def test_empty_has_no_entropy(value):
    assert password_entropy(value) == 0.0


def test_very_long_and_unicode():
    assert password_entropy("a" * 10_000) == round(10_000 * math.log2(26), 1)
    assert password_entropy("日本語のパスワード") == round(9 * math.log2(32), 1)
    # Composed and decomposed accents count the same.
    assert password_entropy("e\u0301t\u00e9") == password_entropy("\u00e9t\u00e9")


def test_entropy_refuses_non_strings():
    with pytest.raises(AnsibleFilterError):
        password_entropy(12345)


@pytest.mark.parametrize("minlen, minclass, expected_alphabet", [
    (12, 4, 99),     # digits + lower + upper + special
    (14, 3, 62),     # digits + lower + upper (the smallest three)
    (20, 1, 10),     # one class: digits only is guaranteed
    (20, 0, 10),     # nothing required: digits only is guaranteed
    (16, 2, 36),     # digits + one letter case
])
def test_policy_entropy_takes_the_smallest_classes(minlen, minclass, expected_alphabet):
    assert policy_entropy(minlen, minclass) == round(minlen * math.log2(expected_alphabet), 1)


def test_policy_entropy_counts_negative_credits_as_required():
    # minclass 1 but special required by ocredit=-1 and upper by ucredit=-1.
    assert policy_entropy(12, 1, ocredit=-1, ucredit=-1) == round(12 * math.log2(37 + 26), 1)


def test_cnil_policies_reach_80_bits():
    assert round(policy_entropy(12, 4)) >= 80
    assert round(policy_entropy(14, 3)) >= 80
    assert round(policy_entropy(12, 3)) < 80
    assert round(policy_entropy(8, 4)) < 80


@pytest.mark.parametrize("args, message", [
    ((0, 4), "at least 1"),
    ((12, 5), "0 to 4"),
    ((12, "four"), "whole numbers"),
    ((12, 4, 1), "positive credits"),
])
def test_policy_entropy_refuses_bad_policies(args, message):
    with pytest.raises(AnsibleFilterError, match=message):
        policy_entropy(*args)


@pytest.mark.parametrize("secret, fragment", [
    ("", "empty"),
    ("P@ssw0rd-2026!x", "common word"),
    ("Azertyuiop!987", "keyboard walk"),
    ("xK9#abcdefgh!Q", "sequence or keyboard walk"),
    ("Qz8!Qz8!Qz8!Qz8!", "one short pattern repeated"),
    ("Vq7#mmmmmmWk2$p", "repeats one character"),
    ("replace me with the relay account's password", "placeholder"),
    ("MotDePasse_Cabinet42", "common word"),
])
def test_weaknesses_say_why(secret, fragment):
    found = password_weaknesses(secret)
    assert any(fragment in reason for reason in found), found


def test_weaknesses_use_the_practice_context():
    found = password_weaknesses("Tilleuls#Vq7mWk2$p", ["Cabinet médical des Tilleuls", "srv-tilleuls"])
    assert any("the practice's own names" in reason for reason in found), found
    assert password_weaknesses("Vq7#mWk2$pLx9@rT", ["Cabinet médical des Tilleuls"]) == []


def test_strong_random_secret_has_no_weakness():
    assert password_weaknesses("Vq7#mWk2$pLx9@rT") == []
    assert password_weaknesses("correct cheval agrafe batterie rouge") == []


def test_secret_problem_names_the_variable_and_never_the_secret():
    secret = "short1"
    problem = secret_problem(secret, "backup_passphrase")
    assert problem.startswith("backup_passphrase: too weak")
    assert secret not in problem
    assert secret_problem("Vq7#mWk2$pLx9@rT", "x") == ""


def test_secret_problem_refuses_obvious_and_reused_and_unresolved():
    assert "too obvious" in secret_problem("Cabinet-Tilleuls-2026-Secure!", "p", context=["Tilleuls"])
    assert "reused" in secret_problem("Vq7#mWk2$pLx9@rT", "p", others=["Vq7#mWk2$pLx9@rT"])
    assert "unresolved template" in secret_problem("{{ vault_x }}", "p")
    assert "empty" in secret_problem(None, "p")


def _fragments(secret: str, size: int = 4) -> set[str]:
    low = secret.lower()
    return {low[i:i + size] for i in range(len(low) - size + 1)}


@pytest.mark.parametrize("secret, kwargs, kind", [
    ("{{ zq_xw }}", {}, "unresolved template"),
    ("Qx7#kw", {}, "too weak"),
    ("P@ssw0rd-Zq7Xw#Kj2Vb", {}, "common word"),
    ("Zq7#Xw9-qwertyuiop-Kj2", {}, "keyboard walk"),
    ("Zq7#Xw9-ghijklmnop-Kj2", {}, "sequence"),
    ("Qz8!Wx5#Qz8!Wx5#Qz8!Wx5#", {}, "one short pattern repeated"),
    ("Zq7#Xw9-bbbbbb-Kj2Vm", {}, "repeats one character"),
    ("Zq7#Xw9-votre-Kj2Vm@Bt4", {}, "placeholder"),
    ("Zq7#Xw9-Tilleuls-Kj2Vm", {"context": ["Cabinet médical des Tilleuls"]}, "own names"),
    ("Zq7#Xw9-Kj2Vm@Bt4$Lp8", {"others": ["Zq7#Xw9-Kj2Vm@Bt4$Lp8"]}, "reused"),
])
def test_every_refusal_names_the_kind_never_a_part_of_the_secret(secret, kwargs, kind):
    """Every refusal path of secret_problem: the message names the variable and the kind of
    weakness, and holds no four characters in a row of the secret (any case)."""
    problem = secret_problem(secret, "vault_x_secret", **kwargs)
    assert problem.startswith("vault_x_secret: "), problem
    assert kind in problem, problem
    # Nor its measured strength, which would tell its length and kinds of characters.
    assert f"{password_entropy(secret):.0f} bits" not in problem, problem
    leaked = [f for f in _fragments(secret) if f in problem.lower()]
    assert leaked == [], f"the message repeats part of the secret: {leaked} in {problem!r}"


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {"password_entropy", "policy_entropy", "password_weaknesses", "secret_problem",
                                             "password_aging_problems", "password_aging_releases"}


# ----------------------------------------------------------------------------- password aging
TODAY = 20786  # 2026-11-29


def shadow(name: str, password: str = "$y$j9T$salt$hash", last: str = "20700", maximum: str = "") -> str:
    return f"{name}:{password}:{last}:0:{maximum}:7:::"


def aging(lines, accounts, **kw):
    from cabinet_passwords import password_aging_problems
    return password_aging_problems(lines, accounts, kw.pop("max_days", 365), kw.pop("today", TODAY), **kw)


def test_a_recent_password_may_be_aged():
    assert aging([shadow("cabinet-admin")], ["cabinet-admin"]) == []


def test_the_account_ansible_connects_as_is_refused_whatever_its_shadow():
    found = aging([], ["msp-admin"], connecting=["msp-admin"])
    assert len(found) == 1 and "msp-admin is an account Ansible connects as" in found[0]
    assert aging([], ["msp-admin"], connecting=["msp-admin"], accepted=["msp-admin"]) == []


@pytest.mark.parametrize("last, words", [
    ("0", "must be changed at its next login"),
    (str(TODAY - 400), "it would expire at once"),
    (str(TODAY - 365), "it would expire at once"),  # expires today
    (str(TODAY - 360), "within 7 days"),            # expires in 5 days: no time to react
])
def test_a_password_that_would_expire_at_once_or_within_days_is_refused(last, words):
    found = aging([shadow("cabinet-admin", last=last)], ["cabinet-admin"])
    assert len(found) == 1 and words in found[0], found
    assert aging([shadow("cabinet-admin", last=last)], ["cabinet-admin"], accepted=["cabinet-admin"]) == []


def test_an_expiry_after_the_warning_days_is_fine():
    assert aging([shadow("cabinet-admin", last=str(TODAY - 357))], ["cabinet-admin"]) == []


@pytest.mark.parametrize("password", ["!", "*", "!*", "", "!$y$j9T$salt$hash"])
def test_an_account_with_no_usable_password_is_refused(password):
    """A key-only account: once the maximum passes, sshd and sudo ask for a password change it
    cannot make."""
    found = aging([shadow("backup-op", password=password)], ["backup-op"])
    assert len(found) == 1 and "no usable password" in found[0], found


def test_an_account_already_at_that_maximum_is_left_as_it_is():
    """The run changes nothing for it, so it causes no lockout (the expiry is the policy's)."""
    assert aging([shadow("cabinet-admin", last=str(TODAY - 400), maximum="365")], ["cabinet-admin"]) == []
    assert aging([shadow("cabinet-admin", last=str(TODAY - 400), maximum="730")], ["cabinet-admin"]) != []


def test_no_maximum_refuses_nothing_and_absent_accounts_are_left_alone():
    assert aging([shadow("backup-op", password="!")], ["backup-op"], max_days=0) == []
    assert aging([], ["nobody-here"]) == []



@pytest.mark.parametrize("last", ["", "-1"])
def test_no_last_change_date_is_refused(last):
    """Debian 13's PAM takes it as no aging, but Debian 12's PAM 1.5.2 as expired at once."""
    found = aging([shadow("cabinet-admin", last=last)], ["cabinet-admin"])
    assert len(found) == 1 and "no last-change date" in found[0], found


def test_aging_messages_never_carry_the_hash():
    secret_hash = "$y$j9T$Zx81salt$Ab12SecretHashValue"
    for last in ("0", str(TODAY - 400), str(TODAY - 360)):
        for found in aging([shadow("cabinet-admin", password=secret_hash, last=last)], ["cabinet-admin"]):
            assert "Zx81" not in found and "SecretHash" not in found


def test_the_connecting_account_s_maximum_nobody_asked_for_is_released():
    from cabinet_passwords import password_aging_releases
    lines = [shadow("msp-admin", maximum="365"), shadow("lab-admin", maximum=""), shadow("other", maximum="99999"),
             shadow("root", maximum="90")]
    assert password_aging_releases(lines, ["msp-admin", "lab-admin", "other", "root"]) == ["msp-admin"]
    assert password_aging_releases(lines, ["msp-admin"], aged_on_purpose=["msp-admin"]) == []
    assert password_aging_releases([shadow("msp-admin", maximum="-1")], ["msp-admin"]) == []
