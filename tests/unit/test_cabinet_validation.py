"""Unit tests for filter_plugins/cabinet_validation.py."""

import pytest
from ansible.errors import AnsibleFilterError

from cabinet_validation import FilterModule, email_address_problem, hostname_problem


@pytest.mark.parametrize("address", [
    "it@msp.example",
    "alertes+cabinet-martin@msp.example.fr",
    "a.b_c@sub.domain-x.example",
])
def test_good_addresses_have_no_problem(address):
    assert email_address_problem(address) == ""


@pytest.mark.parametrize("address, fragment", [
    ("", "empty"),
    (None, "empty"),
    ("msp.example", "got 'msp.example'"),
    ("it@msp", "has no dot"),
    ("it@@msp.example", "got"),
    ("Support <it@msp.example>", "without spaces"),
    (" it@msp.example", "without spaces"),
    ("it@msp..example", "domain is not valid"),
    (".it@msp.example", "before @"),
    ("it..x@msp.example", "before @"),
    ("it@-msp.example", "domain is not valid"),
    ("a@b.example,c@d.example", "got"),
    ("é@msp.example", "before @"),
])
def test_bad_addresses_say_why(address, fragment):
    problem = email_address_problem(address)
    assert problem.startswith("expected one address such as it@msp.example")
    assert fragment in problem


def test_email_refuses_non_strings():
    with pytest.raises(AnsibleFilterError, match="expects a string"):
        email_address_problem(42)


@pytest.mark.parametrize("name", ["smtp.msp.example", "mailsink", "10.0.0.1", "smtp.msp.example.", "a" * 63 + ".fr"])
def test_good_hostnames(name):
    assert hostname_problem(name) == ""


@pytest.mark.parametrize("name, fragment", [
    ("", "empty"),
    ("smtp_msp.example", "letters, digits, hyphens and dots"),
    ("-smtp.example", "letters, digits"),
    ("a" * 64 + ".fr", "letters, digits"),
    (".".join(["abcdefgh"] * 30), "at most 253"),
    ("smtp msp", "letters, digits"),
])
def test_bad_hostnames(name, fragment):
    assert fragment in hostname_problem(name)


def test_filters_are_registered():
    assert set(FilterModule().filters()) >= {"email_address_problem", "hostname_problem"}


@pytest.mark.parametrize("pattern", ["^postgresql-", "libc6$", r"xen-(system|utils)-\d"])
def test_good_regexes(pattern):
    from cabinet_validation import regex_problem

    assert regex_problem(pattern) == ""


@pytest.mark.parametrize("pattern, fragment", [("", "empty"), ("   ", "empty"), ("libc6[", "not a valid"), ("(a", "not a valid")])
def test_bad_regexes(pattern, fragment):
    from cabinet_validation import regex_problem

    assert fragment in regex_problem(pattern)


def test_switch_problems_accepts_what_the_bool_filter_reads_and_names_the_rest():
    from cabinet_validation import switch_problems
    good = {"a": True, "b": False, "c": "false", "d": "Yes", "e": "off", "f": "1", "g": 0, "h": 1}
    assert switch_problems(good) == []
    found = switch_problems({"x_enabled": "y", "y_enabled": "t", "z_enabled": "enabled", "w": 2, "v": None})
    assert [p.split(":")[0] for p in found] == ["x_enabled", "y_enabled", "z_enabled", "w", "v"]
    assert all("expected true or false" in p for p in found)
