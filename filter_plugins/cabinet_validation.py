"""Filters that validate inventory input for cabinet-hardening roles.

Each filter returns an empty string when the value is acceptable, or a sentence that says
what was wrong and what was expected, so an assert can name the variable and the reason.
"""

from __future__ import annotations

import datetime
import re

from ansible.errors import AnsibleFilterError

# ansible-doc reads each filter's documentation from the .yml file of the same name.

_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_IPV4 = re.compile(r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")


def _require_str(value: object, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AnsibleFilterError(f"{name} expects a string, got {type(value).__name__}: {value!r}")
    return value


def hostname_problem(value: object) -> str:
    """Return why ``value`` is not a DNS host name or IPv4 address, or '' when it is."""
    text = _require_str(value, "hostname_problem")
    if not text:
        return "expected a host name such as smtp.msp.example, got an empty value"
    if _IPV4.match(text):
        return ""
    name = text[:-1] if text.endswith(".") else text
    if len(name) > 253:
        return f"expected a host name of at most 253 characters, got {len(name)}"
    if not all(_LABEL.match(label) for label in name.split(".")):
        return f"expected a host name made of letters, digits, hyphens and dots, got {text!r}"
    return ""


def email_address_problem(value: object) -> str:
    """Return why ``value`` is not one e-mail address, or '' when it is."""
    text = _require_str(value, "email_address_problem")
    example = "expected one address such as it@msp.example"
    if not text:
        return f"{example}, got an empty value"
    if text != text.strip() or any(c.isspace() for c in text):
        return f"{example}, without spaces, got {text!r}"
    if text.count("@") != 1:
        return f"{example}, got {text!r}"
    local, domain = text.split("@")
    if not local or not _LOCAL_PART.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        return f"{example}; the part before @ is not valid in {text!r}"
    if "." not in domain:
        return f"{example}; the domain {domain!r} has no dot"
    domain_problem = hostname_problem(domain)
    if domain_problem:
        return f"{example}; the domain is not valid ({domain_problem})"
    return ""


def regex_problem(value: object) -> str:
    """Return why ``value`` is not a usable Python regular expression, or '' when it is."""
    text = _require_str(value, "regex_problem")
    if not text.strip():
        return "expected a regular expression, got an empty value"
    try:
        re.compile(text)
    except re.error as exc:
        return f"{text!r} is not a valid regular expression ({exc})"
    return ""


def date_problem(value: object) -> str:
    """Return why ``value`` is not a calendar date written YYYY-MM-DD, or '' when it is (or is empty)."""
    if isinstance(value, (datetime.date, datetime.datetime)):  # an unquoted date in YAML
        return ""
    text = _require_str(value, "date_problem")
    if not text.strip():
        return ""
    if text != text.strip():
        return f"expected a date written YYYY-MM-DD without spaces or line breaks around it, got {text!r}"
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        return f"expected a date written YYYY-MM-DD (2027-03-31), got {text!r}"
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return f"{text!r} is not a day of the calendar"
    return ""


# smartd matches its -s expression against T/MM/DD/d/HH for each test type, hour by hour.
_SMART_TYPES = "LSCOcnrp"
_SMART_SCHEDULE_CHARS = re.compile(r"[A-Za-z0-9./|()\[\]^$*+?{},:-]+")


def smart_schedule_problem(value: object) -> str:
    """Return why ``value`` is not a smartd self-test schedule (-s REGEXP) that ever runs a test,
    or '' when it is. Each hour of a year is tried, for the short and long tests, as smartd does."""
    text = _require_str(value, "smart_schedule_problem")
    if not text.strip():
        return "expected a smartd -s schedule such as (S/../.././02|L/../../6/03), got an empty value"
    if not _SMART_SCHEDULE_CHARS.fullmatch(text):
        return (f"expected a smartd -s regular expression over T/MM/DD/d/HH without spaces or quotes, "
                f"got {text!r}")
    try:
        pattern = re.compile(text)
    except re.error as exc:
        return f"{text!r} is not a valid regular expression ({exc})"
    start = datetime.datetime(2026, 1, 1)
    for hour in range(366 * 24):
        when = start + datetime.timedelta(hours=hour)
        for kind in _SMART_TYPES:
            if pattern.fullmatch(f"{kind}/{when:%m/%d}/{when.isoweekday()}/{when:%H}"):
                return ""
    return (f"{text!r} schedules no self-test in a whole year: each alternative must match "
            "T/MM/DD/d/HH, such as S/../.././02 (a short test daily at 02:00)")


# What ansible-core's bool filter reads as true or false (as text, in any case); anything else
# it takes as false with a deprecation warning, while the roles' argument specs accept more
# words (y, t, ...) as true.
_SWITCH_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def switch_problems(values: object) -> list[str]:
    """One sentence per switch (name -> value) that is not a clear true or false."""
    if not isinstance(values, dict):
        raise AnsibleFilterError(f"switch_problems expects a dict of switches, got {type(values).__name__}")
    problems = []
    for name, value in values.items():
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            continue
        if isinstance(value, str) and value.lower() in _SWITCH_WORDS:
            continue
        problems.append(f"{name}: expected true or false, got {value!r}.")
    return problems


class FilterModule:
    """cabinet-hardening input validation filters."""

    def filters(self) -> dict[str, object]:
        return {
            "date_problem": date_problem,
            "email_address_problem": email_address_problem,
            "hostname_problem": hostname_problem,
            "regex_problem": regex_problem,
            "smart_schedule_problem": smart_schedule_problem,
            "switch_problems": switch_problems,
        }
