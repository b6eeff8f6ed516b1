"""Password strength filters (CNIL 2022-100 and ANSSI PG-078 method) for cabinet-hardening.

- password_entropy: bits of a password, by the character classes it uses.
- policy_entropy: the minimum bits a pam_pwquality policy guarantees.
- password_weaknesses: why a secret is obvious (empty list when nothing is found).
- secret_problem: one sentence saying why a secret from the inventory must not be used.
- password_aging_problems: why a maximum password age could lock an account out.
- password_aging_releases: accounts Ansible connects as that carry a maximum age to remove.

Method (CNIL 2022-100, annex; ANSSI PG-078 §4): a password of L characters drawn from an
alphabet of N symbols has L x log2(N) bits. N is the sum of the sizes of the classes used:
26 lower-case, 26 upper-case, 10 digits, 37 special characters (the CNIL counts "a list of at
least 37 special characters") and 32 for other letters (accented and non-Latin). Bits are
compared after rounding to the nearest whole bit, as the CNIL's own examples do (12 characters
of the four classes: 12 x log2(99) = 79.6, "80 bits").

ansible-doc reads each filter's documentation from the .yml file of the same name.
"""

from __future__ import annotations

import math
import re
import string
import time
import unicodedata
from typing import Iterable

from ansible.errors import AnsibleFilterError

CLASS_SIZES = {"lower": 26, "upper": 26, "digit": 10, "special": 37, "other": 32}
CLASS_NAMES = tuple(CLASS_SIZES)
_SPECIAL = set(string.punctuation + " ")

# Rows of the keyboards French practices use, for keyboard-walk detection.
KEYBOARD_ROWS = (
    "azertyuiop", "qsdfghjklm", "wxcvbn",      # AZERTY
    "qwertyuiop", "asdfghjkl", "zxcvbnm",      # QWERTY
    "1234567890", "&é\"'(-è_çà",
)
# Words that make a secret obvious in a French medical practice, besides the practice's own.
COMMON_WORDS = (
    "password", "motdepasse", "mdp", "admin", "administrateur", "root", "secret", "azerty",
    "qwerty", "soleil", "bonjour", "doudou", "chouchou", "loulou", "marseille", "paris",
    "cabinet", "medecin", "docteur", "sante", "patient", "infirmier", "kine", "dentiste",
    "pharmacie", "clinique", "changeme", "welcome", "bienvenue", "test", "demo", "default",
    "letmein", "iloveyou", "jetaime", "football", "dragon", "monkey", "master", "login",
    "backup", "sauvegarde", "borg", "ups", "onduleur", "upsmon", "nut", "smtp", "relay",
    "replace", "example", "password1", "123456", "000000", "111111",
)
# Placeholders left in example inventories.
PLACEHOLDERS = re.compile(r"(replace|change|your|votre|todo|xxx|placeholder|example|exemple)", re.I)


def _text(value: object, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise AnsibleFilterError(f"{name} expects a string, got {type(value).__name__}")
    return value


def char_class(char: str) -> str:
    if char in string.ascii_lowercase:
        return "lower"
    if char in string.ascii_uppercase:
        return "upper"
    if char in string.digits:
        return "digit"
    if char in _SPECIAL:
        return "special"
    return "other"


def classes_used(password: str) -> set[str]:
    return {char_class(c) for c in password}


def password_entropy(password: object) -> float:
    """Bits of ``password`` by the CNIL/ANSSI method, rounded to 0.1 bit."""
    text = unicodedata.normalize("NFC", _text(password, "password_entropy"))
    if not text:
        return 0.0
    alphabet = sum(CLASS_SIZES[c] for c in classes_used(text))
    return round(len(text) * math.log2(alphabet), 1)


def policy_entropy(minlen: object, minclass: object = 0, dcredit: object = 0, ucredit: object = 0,
                   lcredit: object = 0, ocredit: object = 0) -> float:
    """Minimum bits that every password accepted by a pam_pwquality policy has.

    The length is ``minlen`` (credits are assumed disabled: positive credits would let shorter
    passwords through, so they are refused). The alphabet is the smallest one the required
    classes guarantee: classes required by a negative credit, and at least ``minclass``
    classes, taking the smallest classes first (digits, then lower and upper case, then
    special characters). A policy that requires nothing guarantees digits only.
    """
    try:
        length = int(minlen)
        classes = int(minclass)
        credits = {"digit": int(dcredit), "upper": int(ucredit), "lower": int(lcredit), "special": int(ocredit)}
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"policy_entropy expects whole numbers: {exc}") from exc
    if length < 1:
        raise AnsibleFilterError(f"policy_entropy: minlen must be at least 1, got {length}")
    if not 0 <= classes <= 4:
        raise AnsibleFilterError(f"policy_entropy: minclass must be 0 to 4, got {classes}")
    if any(v > 0 for v in credits.values()):
        raise AnsibleFilterError("policy_entropy: positive credits let shorter passwords through; use 0 or negative")
    required = {name for name, credit in credits.items() if credit < 0}
    for name in sorted(("digit", "lower", "upper", "special"), key=lambda n: CLASS_SIZES[n]):
        if len(required) >= max(classes, 1):
            break
        required.add(name)
    alphabet = sum(CLASS_SIZES[c] for c in required)
    return round(length * math.log2(alphabet), 1)


def _normalized(text: str) -> str:
    """Lower case, accents removed, common substitutions undone (p@ssw0rd -> password)."""
    stripped = "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c))
    return stripped.translate(str.maketrans("@4310$5!7", "aaeiosslt"))


def _runs(text: str, min_run: int) -> Iterable[str]:
    """Sequences (abcd, 4321) and keyboard walks (azert) of at least ``min_run`` characters,
    each as long as it goes. Only the first 256 characters are searched."""
    lowered = text.lower()[:256]
    alphabets = (string.ascii_lowercase, string.digits) + KEYBOARD_ROWS
    sources = [a for alphabet in alphabets for a in (alphabet, alphabet[::-1])]
    start = 0
    while start <= len(lowered) - min_run:
        longest = ""
        for source in sources:
            end = start + min_run
            while end <= len(lowered) and lowered[start:end] in source:
                end += 1
            if end - 1 - start >= min_run and end - 1 - start > len(longest):
                longest = lowered[start:end - 1]
        if longest:
            yield longest
            start += len(longest)
        else:
            start += 1


def password_weaknesses(password: object, context: object = None, min_run: int = 4) -> list[str]:
    """Reasons a secret is obvious: words, sequences, keyboard walks, repeats, context words.

    Each reason names a kind of weakness, never a part of the secret: the reasons end up in
    error messages, logs and CI output.

    ``context``: words that must not appear in the secret (the practice's name, user names,
    host names); each is compared without case and accents, parts shorter than 4 ignored.
    """
    text = _text(password, "password_weaknesses")
    found: list[str] = []
    if not text:
        return ["it is empty"]
    plain = _normalized(text)
    letters_only = re.sub(r"[^a-z]", "", plain)
    for word in COMMON_WORDS:
        if len(word) >= 4 and (word in plain or (word.isalpha() and word in letters_only)):
            found.append("it contains a common word or name from a password list")
            break
    if re.fullmatch(r"(.+?)\1+", text):
        found.append("it is one short pattern repeated")
    elif re.search(r"(.)\1{3,}", text):
        found.append("it repeats one character four times or more")
    runs = sorted(set(_runs(text, min_run)), key=len, reverse=True)
    if runs:
        found.append(f"it contains a sequence or keyboard walk ({min_run} or more characters in a row)")
    if PLACEHOLDERS.search(text):
        found.append("it looks like a placeholder left from an example")
    words: list[str] = []
    if isinstance(context, str):
        words = [context]
    elif context:
        words = [str(w) for w in context if w]
    for item in words:
        for part in re.split(r"[\s@._,;:/\\-]+", _normalized(item)):
            if len(part) >= 4 and part in plain:
                found.append("it contains a word from the practice's own names (practice, host or user names)")
                break
    return found


def secret_problem(secret: object, name: object = "", min_bits: object = 80, context: object = None,
                   others: object = None) -> str:
    """Why a secret from the inventory must not be used ('' when it may).

    Never repeats the secret. ``others``: the other secrets of the inventory, to refuse reuse.
    """
    text = _text(secret, "secret_problem")
    label = str(name) if name else "the secret"
    if not text:
        return f"{label}: expected a secret from the vault, got an empty value"
    if "{{" in text or "{%" in text:
        return f"{label}: the value is an unresolved template; is the vault loaded?"
    bits = password_entropy(text)
    if round(bits) < int(min_bits):
        # The measured strength is not printed: it would tell the secret's length and kinds of
        # characters.
        return (f"{label}: too weak: below the {int(min_bits)} bits needed "
                f"(CNIL 2022-100: for example 14 characters of upper, lower case and digits, "
                f"or 20 random words' worth of length)")
    weaknesses = password_weaknesses(text, context)
    if weaknesses:
        return f"{label}: too obvious: " + "; ".join(weaknesses)
    if others and any(text == _text(o, "secret_problem") for o in others):
        return f"{label}: reused: the same value is used for another secret of this inventory"
    return ""


# ----------------------------------------------------------------------------- password aging
# /etc/shadow fields: name, hash, last change (days since 1970, 0: change at next login, empty:
# no aging), min, max (empty or -1: none), warn, inactive, expire, reserved.
NO_MAXIMUM = {"", "-1", "99999"}


def _shadow(lines: object) -> dict[str, list[str]]:
    found = {}
    for line in lines or []:
        fields = str(line).split(":")
        if len(fields) >= 5 and fields[0]:
            found[fields[0]] = fields
    return found


def _has_maximum(fields: list[str]) -> bool:
    return fields[4].strip() not in NO_MAXIMUM


def _day(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(days * 86400))


def password_aging_problems(shadow_lines: object, accounts: object, max_days: object, today: object,
                            connecting: object = None, accepted: object = None, warn_days: object = 7) -> list[str]:
    """Why giving ``accounts`` a maximum password age of ``max_days`` could lock someone out.

    Refused, unless the account is in ``accepted`` (one with another way in): an account Ansible
    connects as; and, when this run changes the account's maximum, a password that must be
    changed at the next login, one that would expire at once or within ``warn_days`` (no time
    to notice the warning and change it), and an account with no usable password (a key-only
    login: once the maximum passes, sshd and sudo demand a password change it cannot make).
    ``today``: days since 1970 on the host, in UTC. Never returns a password hash.
    """
    maximum, day, warn = int(max_days), int(today), int(warn_days)
    accepted = set(accepted or [])
    connecting = set(connecting or [])
    shadow = _shadow(shadow_lines)
    problems = []
    if maximum <= 0:
        return problems
    for account in accounts or []:
        if account in accepted:
            continue
        prefix = "password_policy_privileged_accounts: "
        if account in connecting:
            problems.append(f"{prefix}{account} is an account Ansible connects as; a maximum age of {maximum} days"
                            " would stop its sudo and SSH logins once its password is that old.")
            continue
        fields = shadow.get(account)
        if fields is None or fields[4].strip() == str(maximum):
            continue  # not on this host, or this run changes nothing for it
        password, last = fields[1], fields[2].strip()
        if password == "" or password.startswith(("!", "*")):
            problems.append(f"{prefix}{account} has no usable password (a key-only login, or none); with a maximum"
                            f" age of {maximum} days its sudo and SSH logins would stop once that age passes,"
                            " asking for a password change it cannot make.")
            continue
        if not last.isdigit():
            # No last change (empty or -1): shadow-utils and Linux-PAM 1.6+ (Debian 13) see no
            # aging, but Debian 12's PAM 1.5.2 counts the password as expired as soon as it has
            # a maximum.
            problems.append(f"{prefix}the password of {account} has no last-change date; with"
                            f" password_policy_privileged_max_days={maximum} Debian 12's PAM counts it as expired"
                            " at once, which stops its sudo and SSH logins (set one with chage -d).")
            continue
        last_day = int(last)
        if last_day == 0:
            problems.append(f"{prefix}the password of {account} must be changed at its next login (last change: 0);"
                            f" with password_policy_privileged_max_days={maximum} it would expire at once, which"
                            " stops its sudo and SSH logins.")
        elif last_day + maximum <= day:
            problems.append(f"{prefix}the password of {account} was last changed on {_day(last_day)}; with"
                            f" password_policy_privileged_max_days={maximum} it would expire at once, which stops"
                            " its sudo and SSH logins.")
        elif last_day + maximum <= day + warn:
            problems.append(f"{prefix}the password of {account} was last changed on {_day(last_day)}; with"
                            f" password_policy_privileged_max_days={maximum} it would expire on"
                            f" {_day(last_day + maximum)}, within {warn} days, before anyone can react to the"
                            " warning; its sudo and SSH logins would then stop.")
    return problems


def password_aging_releases(shadow_lines: object, connecting: object, aged_on_purpose: object = None) -> list[str]:
    """The accounts Ansible connects as that carry a maximum password age nobody asked this run
    for (for example set by inventories/example before issue 12 aged the MSP's own admin):
    their maximum is removed, or they lock the MSP out the day it passes."""
    shadow = _shadow(shadow_lines)
    on_purpose = set(aged_on_purpose or [])
    return [account for account in dict.fromkeys(connecting or [])
            if account != "root" and account not in on_purpose
            and account in shadow and _has_maximum(shadow[account])]


class FilterModule:
    """cabinet-hardening password strength filters."""

    def filters(self) -> dict[str, object]:
        return {
            "password_entropy": password_entropy,
            "policy_entropy": policy_entropy,
            "password_weaknesses": password_weaknesses,
            "secret_problem": secret_problem,
            "password_aging_problems": password_aging_problems,
            "password_aging_releases": password_aging_releases,
        }
