"""Filters of the website_privacy role: validate a site's declarations, and prepare a static
site's pages at deploy time so that nothing needing consent loads before consent.

``website_page`` rewrites one HTML page of the practice's site:
- a ``<script src>`` of a declared third-party service gets ``type="text/plain"``, its URL in
  ``data-src`` and the service's purpose in ``data-category``, so the browser neither fetches
  nor runs it until the consent library, on consent for that purpose, puts it back;
- an ``<iframe>``/``<img>``/``<video>``/``<audio>``/``<source>`` of a declared service loses its
  ``src`` (kept in ``data-cabinet-src``) until consent (the role's cabinet-consent.js);
- anything else that would load from another host (an undeclared service, an external
  stylesheet or font, a form posting elsewhere), an inline script or an ``on...=`` handler
  (which the site's Content-Security-Policy would block anyway) stops the run, naming the page;
- the consent library and the legal footer are added.

The functions are pure: the role reads the page on the controller, passes the text here and
copies the result to the host.
"""

from __future__ import annotations

import html
import os
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

from ansible.errors import AnsibleFilterError

PURPOSES = ("analytics", "video", "map", "appointment")
_SITE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Elements whose URL attribute makes the browser load something as the page loads.
# Attributes that make the browser fetch something as the page loads, whatever the element
# (href and xlink:href only outside navigation elements: an SVG <image>, <use>, <script>).
_FETCHING = ("src", "srcset", "imagesrcset", "poster", "data", "background", "href", "xlink:href", "ping",
             "action", "formaction", "codebase", "archive", "manifest", "itemtype")
# Elements whose href is a link the visitor follows, not a fetch (<a ping> is checked apart).
_NAVIGATION = {"a", "area"}
# Of the elements of a declared service, those held back until consent by moving their URL.
_HELD_BY_SOURCE = {"iframe", "img", "image", "source", "video", "audio"}
# <link rel=...> values that only name a page and load nothing.
_LINK_NAMES_ONLY = {"canonical", "alternate", "author", "license", "help", "me", "next", "prev", "bookmark"}
# <script type> values that hold data and never run; any other type is taken as a script.
_DATA_TYPES = {"application/ld+json", "application/json", "text/plain", "text/template", "text/x-template", "text/html"}
# Referrer policies a page may set for itself: none sends a page's path to another site.
_REFERRER_OK = {"no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin", "origin"}
# Markup where Python's parser and browsers disagree on where a comment ends: a tag hidden from
# this filter inside what it takes for a comment would be live in the browser.
_AMBIGUOUS = re.compile(r"--!>|<!--->|<!-->|<!\[|<!--\[if|</(?:script|style)[^>\s]", re.IGNORECASE)
# Characters browsers drop from anywhere in a URL (tab, line feed, carriage return), and those
# they trim from its ends (C0 controls and space).
_URL_DROPPED = re.compile(r"[\t\n\r]")
_URL_TRIMMED = "".join(chr(c) for c in range(0x21))


def server_name_problem(value: object) -> str:
    """Why ``value`` cannot be a site's nginx server_name (a fully qualified DNS name in lower
    case, no wildcard, no port), or '' when it can."""
    if not isinstance(value, str) or not value:
        return f"expected a fully qualified host name such as www.cabinet-exemple.fr, got {value!r}"
    if len(value) > 253:
        return f"expected a host name of at most 253 characters, got {len(value)}"
    labels = value.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return (f"expected a fully qualified host name in lower case (letters, digits, hyphens, dots, "
                f"no wildcard, no port), such as www.cabinet-exemple.fr, got {value!r}")
    return ""


def site_name_problem(value: object) -> str:
    """Why ``value`` cannot name a site (it names files and nginx variables), or ''."""
    if isinstance(value, str) and _SITE_NAME.match(value):
        return ""
    return f"expected 1 to 40 lower-case letters, digits or hyphens such as cabinet-tilleuls, got {value!r}"


def rpps_problem(value: object) -> str:
    """Why ``value`` is not an RPPS number (11 digits), or ''."""
    text = str(value) if isinstance(value, int) else value
    if isinstance(text, str) and re.fullmatch(r"\d{11}", text):
        return ""
    return f"expected the health professional's RPPS number, 11 digits, got {value!r}"


_SITE_DEFAULTS = {"server_aliases": [], "title": "", "content": "static", "source": "", "upstream": "",
                  "certificate": "acme", "tls_certificate": "", "tls_private_key": "", "services": []}
_SERVICE_DEFAULTS = {"label": "", "provider": "", "privacy_url": "", "hosts": [], "cookies": []}


def website_sites(sites: object) -> list[dict]:
    """The sites with every optional key filled in (the argument specs' defaults), services too;
    a service's label defaults to its name. Leaves validation to the role's validate.yml."""
    if not isinstance(sites, list):
        raise AnsibleFilterError(f"website_privacy_sites: expected a list of sites, got {type(sites).__name__}")
    out = []
    for site in sites:
        if not isinstance(site, dict):
            raise AnsibleFilterError(f"website_privacy_sites: expected mappings, got {site!r}")
        full = {**_SITE_DEFAULTS, **site}
        services = []
        for service in full.get("services") or []:
            if not isinstance(service, dict):
                raise AnsibleFilterError(f"website_privacy_sites ({full.get('name')}).services: expected mappings, got {service!r}")
            item = {**_SERVICE_DEFAULTS, **service}
            item["label"] = item["label"] or str(item.get("name", ""))
            item["hosts"] = [str(h).lower() for h in item["hosts"] or []]
            services.append(item)
        full["services"] = services
        full["server_aliases"] = list(full["server_aliases"] or [])
        out.append(full)
    return out


def _validation():
    """cabinet_validation.py, beside this file: Ansible loads filter plugins under names of its
    own, so it is loaded by path rather than imported by name."""
    import importlib.util
    import sys

    name = "cabinet_hardening_validation"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "cabinet_validation.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _regex_error(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return True
    return False


def _one_line(value: object, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit and not re.search(r"[\x00-\x1f\x7f\u2028\u2029]", value)


def _certificate_problems(cert_pem: str, key_pem: str, names: list[str]) -> list[str]:
    """Why a provided certificate cannot serve these names with this key: it does not parse,
    the key is not its key, it has expired, or it does not name every site name."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        return [f"the certificate does not parse ({exc})."]
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        return [f"the private key does not parse, or has a passphrase nginx could not type ({exc})."]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    problems = []
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, spki):
        problems.append("the private key is not the certificate's key.")
    # cryptography 42 and later; Debian 12's python3-cryptography (38) has the naive ones only.
    utc = dt.timezone.utc
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=utc)
    not_before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before.replace(tzinfo=utc)
    now = dt.datetime.now(utc)
    if not_after <= now:
        problems.append(f"the certificate expired on {not_after:%Y-%m-%d}.")
    if not_before > now:
        problems.append(f"the certificate is not valid before {not_before:%Y-%m-%d}.")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        sans = []
    missing = [n for n in names if n and not any(_matches(n, s.lower()) for s in sans)]
    if missing:
        problems.append(f"the certificate does not name {', '.join(missing)} (it names {', '.join(sans) or 'none'}).")
    return problems


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return name.count(".") == pattern.count(".") and name.endswith(pattern[1:])
    return name == pattern


def _blank(value: object) -> bool:
    return not isinstance(value, str) or not value.strip()


def website_problems(sites: object, publisher: object, hosting: object, settings: object) -> list[str]:
    """Every problem of the website_privacy inputs, one sentence each naming the variable.

    ``sites`` is website_privacy_sites after website_sites; ``settings`` holds
    form_enabled, rights_recipient, dpo_email, acme_email, acme_directory, acme_ca_bundle."""
    email_address_problem = _validation().email_address_problem
    problems: list[str] = []
    sites = website_sites(sites)
    publisher = publisher if isinstance(publisher, dict) else {}
    hosting = hosting if isinstance(hosting, dict) else {}
    settings = settings if isinstance(settings, dict) else {}
    own_names: list[str] = []
    for site in sites:
        own_names += [site.get("server_name")] + list(site["server_aliases"])
    for i, site in enumerate(sites):
        var = f"website_privacy_sites[{i}]"
        label = f"{var} ({site.get('name')})"
        if site_name_problem(site.get("name")):
            problems.append(f"{var}.name: {site_name_problem(site.get('name'))}.")
        for name in [site.get("server_name")] + site["server_aliases"]:
            if server_name_problem(name):
                problems.append(f"{label}.server_name/server_aliases: {server_name_problem(name)}.")
        if site["content"] == "static":
            if _blank(site["source"]):
                problems.append(f"{label}.source: a static site needs the folder (on the controller) that holds its files.")
            elif not os.path.isdir(site["source"]):
                problems.append(f"{label}.source: expected a folder on the controller, got {site['source']!r} (not found).")
        elif site["content"] == "proxy":
            if not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+(:[0-9]{1,5})?/?", str(site["upstream"])):
                problems.append(f"{label}.upstream: expected the CMS's URL, such as http://127.0.0.1:8080 "
                                f"(scheme, host, port, no path), got {site['upstream']!r}.")
        else:
            problems.append(f"{label}.content: expected static or proxy, got {site['content']!r}.")
        if site["certificate"] == "provided":
            if "-----BEGIN CERTIFICATE-----" not in str(site["tls_certificate"]):
                problems.append(f"{label}.tls_certificate: the certificate is \"provided\" but no PEM certificate "
                                f"was given (missing certificate).")
            elif not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", str(site["tls_private_key"])):
                problems.append(f"{label}.tls_private_key: the certificate is \"provided\" but no PEM private key was given.")
            else:
                problems += [f"{label}.tls_certificate: {p}" for p in
                             _certificate_problems(site["tls_certificate"], site["tls_private_key"],
                                                   [site.get("server_name")] + site["server_aliases"])]
        elif site["certificate"] != "acme":
            problems.append(f"{label}.certificate: expected acme or provided, got {site['certificate']!r}.")
        if not _one_line(site["title"], 120):
            problems.append(f"{label}.title: expected one line of at most 120 characters, got {site['title']!r}.")
        names = [svc.get("name") for svc in site["services"]]
        if len(names) != len(set(map(str, names))):
            problems.append(f"{label}.services: two services have the same name.")
        for j, svc in enumerate(site["services"]):
            where = f"{var}.services[{j}] ({svc.get('name')})"
            if not isinstance(svc.get("name"), str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", svc["name"]):
                problems.append(f"{var}.services[{j}].name: expected lower-case letters, digits, hyphens such as "
                                f"youtube, got {svc.get('name')!r}.")
            for key in ("label", "provider"):
                if not _one_line(svc.get(key, ""), 120):
                    problems.append(f"{where}.{key}: expected one line of at most 120 characters, got {svc.get(key)!r}.")
            if svc.get("privacy_url") and not re.fullmatch(r"https://[^\s\"'<>]+", str(svc["privacy_url"])):
                problems.append(f"{where}.privacy_url: expected an https:// address, got {svc['privacy_url']!r}.")
            for pattern in svc.get("cookies") or []:
                if not isinstance(pattern, str) or not re.fullmatch(r"[A-Za-z0-9_.*+?^$|()\[\]-]{1,80}", pattern) \
                        or _regex_error(pattern):
                    problems.append(f"{where}.cookies: expected cookie names or simple patterns such as _pk_.*, got {pattern!r}.")
            if svc.get("purpose") not in PURPOSES:
                problems.append(f"{where}.purpose: expected one of {', '.join(PURPOSES)}, got {svc.get('purpose')!r}.")
            if not svc["hosts"]:
                problems.append(f"{where}.hosts: expected the hosts the service loads from, got none.")
            for host in svc["hosts"]:
                if server_name_problem(host):
                    problems.append(f"{where}.hosts: {server_name_problem(host)}.")
                elif host in own_names:
                    problems.append(f"{where}.hosts: {host} is one of the sites' own names.")
    if len({s.get("name") for s in sites}) != len(sites):
        problems.append("website_privacy_sites: two sites have the same name.")
    if len(set(own_names)) != len(own_names):
        problems.append("website_privacy_sites: a server_name or alias is used twice.")
    if not sites:
        return problems
    for key in ("name", "address", "phone", "email"):
        if _blank(publisher.get(key)):
            problems.append(f"website_privacy_publisher.{key}: the legal notice needs the publisher's {key} (LCEN art. 1-1).")
    if not _blank(publisher.get("email")) and email_address_problem(publisher["email"]):
        problems.append(f"website_privacy_publisher.email: {email_address_problem(publisher['email'])}.")
    kind = publisher.get("kind", "professional")
    if kind == "professional":
        if rpps_problem(publisher.get("rpps")):
            problems.append(f"website_privacy_publisher.rpps: a health professional publishes the site: "
                            f"{rpps_problem(publisher.get('rpps'))}.")
        for key in ("profession", "ordre", "conventionnement"):
            if _blank(publisher.get(key)):
                problems.append(f"website_privacy_publisher.{key}: a health professional's legal notice states it.")
    elif kind == "company":
        for key in ("legal_form", "rcs", "capital"):
            if _blank(publisher.get(key)):
                problems.append(f"website_privacy_publisher.{key}: a company's legal notice states it.")
    elif kind != "association":
        problems.append(f"website_privacy_publisher.kind: expected professional, company or association, got {kind!r}.")
    for key in ("name", "address", "phone"):
        if _blank(hosting.get(key)):
            problems.append(f"website_privacy_hosting.{key}: the legal notice needs the host's identity "
                            f"(name, address, phone; LCEN art. 1-1).")
    if settings.get("form_enabled") and email_address_problem(settings.get("rights_recipient") or ""):
        problems.append(f"website_privacy_rights_recipient: where rights requests go: "
                        f"{email_address_problem(settings.get('rights_recipient') or '')}.")
    if settings.get("dpo_email") and email_address_problem(settings["dpo_email"]):
        problems.append(f"website_privacy_dpo.email: {email_address_problem(settings['dpo_email'])}.")
    if any(s["certificate"] == "acme" for s in sites):
        if email_address_problem(settings.get("acme_email") or ""):
            problems.append(f"website_privacy_acme_email: a site uses ACME: {email_address_problem(settings.get('acme_email') or '')}.")
        if not re.fullmatch(r"https://[^\s/]+(/\S*)?", str(settings.get("acme_directory") or "")):
            problems.append(f"website_privacy_acme_directory: expected an https:// URL, got {settings.get('acme_directory')!r}.")
    bundle = settings.get("acme_ca_bundle") or ""
    if bundle and "-----BEGIN CERTIFICATE-----" not in bundle:
        problems.append("website_privacy_acme_ca_bundle: expected a PEM certificate or nothing.")
    return problems


def _host_of(url: str) -> str | None:
    """The host a URL loads from, or None for a URL of the page's own site (relative, data:)."""
    url = _URL_DROPPED.sub("", url).strip(_URL_TRIMMED)
    if "\\" in url:
        # Browsers read a backslash as a slash: "/\\t.example/" loads from t.example.
        raise ValueError(f"a backslash in the URL {url!r}")
    if url.startswith("//"):
        url = "https:" + url
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"unreadable URL {url!r}") from exc
    if parts.scheme in ("http", "https") or (parts.scheme == "" and parts.netloc):
        return (parts.hostname or "").lower()
    if parts.scheme in ("", "data", "blob", "mailto", "tel", "about"):
        return None
    return parts.scheme + ":"   # javascript:, ftp:, file: ... never allowed to load


def _srcset_urls(value: str) -> list[str]:
    return [item.strip().split()[0] for item in value.split(",") if item.strip()]


def _refresh_url(content: str) -> str:
    """The URL of <meta http-equiv=refresh content="5; url='...'">, read as the HTML standard
    reads it: a delay, then ';', ',' or spaces, then the URL with or without url=."""
    match = re.match(r"\s*[\d.]*\s*[;,]?\s*(?:url\s*=\s*)?(.*)", content, re.IGNORECASE | re.DOTALL)
    return match.group(1).strip().strip("'\"") if match else ""


class _Tags(HTMLParser):
    """Every start tag with its place in the text, inline script bodies, and the places of the
    real (not commented-out) </head> and </body>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[int, int, str, list[tuple[str, str | None]], str]] = []
        self.inline_scripts: list[int] = []
        self.ends: dict[str, list[int]] = {"head": [], "body": []}
        self._script_open: tuple[int, bool] | None = None
        self._lines: list[int] = []

    def feed_text(self, text: str) -> None:
        starts = [0]
        for match in re.finditer("\n", text):
            starts.append(match.end())
        self._lines = starts
        self.feed(text)
        self.close()

    def _offset(self) -> int:
        line, col = self.getpos()
        return self._lines[line - 1] + col

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raw = self.get_starttag_text() or ""
        start = self._offset()
        self.tags.append((start, start + len(raw), tag, attrs, raw))
        if tag == "script":
            attr = dict(attrs)
            runs = (attr.get("type") or "").strip().lower() not in _DATA_TYPES
            self._script_open = (start, runs and attr.get("src") is None)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "script":
            self._script_open = None

    def handle_data(self, data: str) -> None:
        if self._script_open and data.strip():
            # A script that runs inline, or a data block that holds markup (where browsers and
            # this parser may disagree on where it ends).
            if self._script_open[1] or "<" in data:
                self.inline_scripts.append(self._script_open[0])

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script_open = None
        if tag in self.ends:
            self.ends[tag].append(self._offset())


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _render_tag(tag: str, attrs: list[tuple[str, str | None]], self_closing: bool) -> str:
    parts = [tag]
    for name, value in attrs:
        parts.append(name if value is None else f'{name}="{html.escape(value, quote=True)}"')
    return "<" + " ".join(parts) + (" />" if self_closing else ">")


def _service_index(services: list[dict]) -> dict[str, dict]:
    index: dict[str, dict] = {}
    for service in services:
        for host in service.get("hosts", []):
            index[str(host).lower()] = service
    return index


def _fetched_urls(tag: str, attrs: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """(attribute, URL) of everything the element makes the browser fetch."""
    attr = dict(attrs)
    urls: list[tuple[str, str]] = []
    for name, value in attrs:
        if not value or name not in _FETCHING:
            continue
        if name in ("href", "xlink:href"):
            if tag in _NAVIGATION or tag == "base":
                continue
            if tag == "link" and set((attr.get("rel") or "").lower().split()) <= _LINK_NAMES_ONLY:
                continue
        if name == "itemtype":
            continue  # a vocabulary's name, never fetched
        if name in ("srcset", "imagesrcset"):
            urls += [(name, url) for url in _srcset_urls(value)]
        elif name in ("ping", "archive"):
            urls += [(name, url) for url in value.split()]
        else:
            urls.append((name, value))
    if tag == "meta" and (attr.get("http-equiv") or "").lower() == "refresh":
        url = _refresh_url(attr.get("content") or "")
        if url:
            urls.append(("content", url))
    return urls


def website_page(text: object, services: object = None, own_hosts: object = None,
                 head: str = "", footer: str = "", page: str = "page") -> str:
    """Rewrite one page of a static site (see the module's docstring). ``services`` is the
    site's list of declared services ({name, purpose, hosts}); ``own_hosts`` the site's own
    names; ``head`` and ``footer`` HTML added before </head> and </body>; ``page`` names the
    page in error messages."""
    if not isinstance(text, str):
        raise AnsibleFilterError(f"website_page: {page}: expected the page's text, got {type(text).__name__}")
    services = services or []
    if not isinstance(services, list) or not all(isinstance(s, dict) for s in services):
        raise AnsibleFilterError("website_page: services: expected a list of mappings")
    own = {str(h).lower() for h in (own_hosts or [])}
    index = _service_index(services)

    problems: list[str] = []
    for match in _AMBIGUOUS.finditer(text):
        problems.append(f"line {_line_of(text, match.start())}: {match.group(0)!r}, a comment or CDATA form that "
                        f"browsers and this check read differently; use plain <!-- ... --> comments")
    parser = _Tags()
    parser.feed_text(text)
    for start in parser.inline_scripts:
        problems.append(f"line {_line_of(text, start)}: an inline <script> (or a data block holding markup); move "
                        f"it to a .js file of the site (the Content-Security-Policy runs no inline script)")

    edits: list[tuple[int, int, str]] = []
    for start, end, tag, attrs, raw in parser.tags:
        line = _line_of(text, start)
        attr = dict(attrs)
        names = [name for name, _ in attrs]
        if len(names) != len(set(names)):
            problems.append(f"line {line}: <{tag}> has an attribute twice (browsers read the first, this check "
                            f"the last)")
            continue
        handlers = [name for name in names if name.startswith("on")]
        if handlers:
            problems.append(f"line {line}: <{tag} {handlers[0]}=...>, an inline event handler; use a .js file "
                            f"(the Content-Security-Policy runs no inline script)")
        if tag == "base":
            problems.append(f"line {line}: a <base> element; the site's pages must not redirect their links")
        if tag == "style":
            problems.append(f"line {line}: an inline <style>; move it to a .css file of the site (the "
                            f"Content-Security-Policy applies no inline style)")
        if "srcdoc" in names:
            problems.append(f"line {line}: <{tag} srcdoc=...>, a page inside the page that this check does not read")
        if tag == "meta" and (attr.get("name") or "").lower() == "referrer" \
                and (attr.get("content") or "").strip().lower() not in _REFERRER_OK:
            problems.append(f"line {line}: <meta name=referrer content={attr.get('content')!r}> would send the "
                            f"page's address to other sites")
        foreign: dict[str, dict | None] = {}
        for name, url in _fetched_urls(tag, attrs):
            try:
                host = _host_of(url)
            except ValueError as exc:
                problems.append(f"line {line}: <{tag} {name}>: {exc}")
                continue
            if host is None or host in own:
                continue
            if name in ("action", "formaction"):
                problems.append(f"line {line}: a form that posts to {host}; no third-party form on the site")
                continue
            foreign[host] = index.get(host) if name in ("src", "srcset", "poster", "data-src") else None
            if name not in ("src", "srcset", "poster"):
                problems.append(f"line {line}: <{tag} {name}=...> reaches {host} as the page loads; only the src of "
                                f"a declared service's <script>, <iframe> or media can wait for consent")
                foreign.pop(host, None)
        if not foreign:
            continue
        undeclared = sorted(h for h, svc in foreign.items() if svc is None)
        if undeclared:
            problems.append(f"line {line}: <{tag}> loads from {', '.join(undeclared)}, which no service of the "
                            f"site declares (website_privacy_sites[].services[].hosts); declare it with its "
                            f"purpose, or serve the file from the site")
            continue
        owners = {svc["name"] for svc in foreign.values() if svc}
        service = next(svc for svc in foreign.values() if svc)
        if len(owners) > 1:
            problems.append(f"line {line}: <{tag}> loads from the hosts of several services ({', '.join(sorted(owners))})")
            continue
        extra = [("data-category", service["purpose"]), ("data-service", service["name"])]
        kept = [(n, v) for n, v in attrs if n not in ("data-category", "data-service")]
        if tag == "script":
            # The consent library's own markup: it fetches data-src and restores data-type.
            kind = (attr.get("type") or "").strip()
            kept = [("data-src" if n == "src" else n, v) for n, v in kept if n != "type"]
            new_attrs = [("type", "text/plain")] + ([("data-type", kind)] if kind else []) + extra + kept
        elif tag in _HELD_BY_SOURCE:
            new_attrs = [(f"data-cabinet-{n}" if n in ("src", "srcset", "poster") else n, v) for n, v in kept] + extra
        else:
            problems.append(f"line {line}: <{tag}> from the service {service['name']} cannot be held back until "
                            f"consent; use an <iframe> or a <script>")
            continue
        edits.append((start, end, _render_tag(tag, new_attrs, raw.rstrip().endswith("/>"))))

    if problems:
        raise AnsibleFilterError(f"website_page: {page}: " + "; ".join(problems) + ".")

    # The head and footer go before the real </head> and </body> (not one inside a comment),
    # or at the start and the end of a page that has none.
    if head:
        at = parser.ends["head"][0] if parser.ends["head"] else 0
        edits.append((at, at, head + "\n"))
    if footer:
        at = parser.ends["body"][-1] if parser.ends["body"] else len(text)
        edits.append((at, at, footer + "\n"))
    out = text
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        out = out[:start] + replacement + out[end:]
    return out


class FilterModule:
    """website_privacy filters."""

    def filters(self) -> dict[str, object]:
        return {
            "website_page": website_page,
            "website_sites": website_sites,
            "website_problems": website_problems,
            "server_name_problem": server_name_problem,
            "site_name_problem": site_name_problem,
            "rpps_problem": rpps_problem,
        }
