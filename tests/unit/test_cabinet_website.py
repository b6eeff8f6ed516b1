"""website_privacy's Python: the page rewriting and input checks (filter_plugins/cabinet_website.py),
the rights request form's validation and mail, and the certificate watcher's thresholds."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from cabinet_website import rpps_problem, server_name_problem, website_page, website_problems, website_sites
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SERVICES = [
    {"name": "youtube", "purpose": "video", "hosts": ["www.youtube-nocookie.com"]},
    {"name": "matomo", "purpose": "analytics", "hosts": ["stats.msp-mesure.example"]},
    {"name": "osm", "purpose": "map", "hosts": ["www.openstreetmap.org"]},
]
OWN = ["www.cabinet-tilleuls.fr", "cabinet-tilleuls.fr"]


def page(body: str, head: str = "") -> str:
    return f"<!DOCTYPE html><html lang=fr><head><title>t</title>{head}</head><body>{body}</body></html>"


# ----------------------------------------------------------------------------- website_page
def test_a_declared_script_is_held_back_until_consent_for_its_purpose():
    out = website_page(page("", '<script src="https://stats.msp-mesure.example/m.js" async></script>'), SERVICES, OWN)
    assert ' src="https://stats' not in out
    assert ('<script type="text/plain" data-category="analytics" data-service="matomo" '
            'data-src="https://stats.msp-mesure.example/m.js" async>') in out


def test_a_script_type_is_kept_for_the_consent_library_to_restore():
    out = website_page(page('<script type="module" src="https://stats.msp-mesure.example/m.js"></script>'), SERVICES, OWN)
    assert 'type="text/plain" data-type="module"' in out


@pytest.mark.parametrize("tag", ["iframe", "img", "video", "audio"])
def test_declared_frames_and_media_lose_their_source_until_consent(tag):
    out = website_page(page(f'<{tag} width="5" src="https://www.youtube-nocookie.com/embed/x"></{tag}>'), SERVICES, OWN)
    assert ' src=' not in out
    assert 'data-cabinet-src="https://www.youtube-nocookie.com/embed/x"' in out
    assert 'data-category="video" data-service="youtube"' in out


def test_protocol_relative_and_srcset_urls_count_as_third_parties():
    out = website_page(page('<img src="/a.png" srcset="//www.openstreetmap.org/t.png 2x">'), SERVICES, OWN)
    assert 'data-cabinet-srcset="//www.openstreetmap.org/t.png 2x"' in out and 'src="/a.png"' in out


def test_the_sites_own_files_and_links_to_elsewhere_are_left_alone():
    text = page('<img src="/a.png"><img src="https://cabinet-tilleuls.fr/b.png"><a href="https://rdv.example/x">RDV</a>'
                '<link rel="canonical" href="https://www.cabinet-tilleuls.fr/"><script type="application/ld+json">{}</script>')
    out = website_page(text, SERVICES, OWN)
    assert out == text


@pytest.mark.parametrize("snippet, words", [
    ('<script src="https://cdn.example.net/jquery.js"></script>', "cdn.example.net, which no service"),
    ('<img src="http://pixel.example.org/p.gif">', "pixel.example.org, which no service"),
    ('<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">', "fonts.googleapis.com"),
    ('<link rel="preconnect" href="https://fonts.gstatic.com">', "fonts.gstatic.com"),
    ("<script>alert(1)</script>", "an inline <script>"),
    ('<button onclick="go()">x</button>', "inline event handler"),
    ('<form action="https://forms.example.com/f"></form>', "posts to forms.example.com"),
    ('<base href="https://elsewhere.example/">', "<base>"),
    ('<embed src="https://www.youtube-nocookie.com/v.swf">', "cannot be held back"),
    ('<iframe src="javascript:alert(1)"></iframe>', "javascript:"),
    ('<meta http-equiv="refresh" content="0; url=https://elsewhere.example/">', "reaches elsewhere.example"),
    # What a hostile read of session 7 slipped past the first version of the filter:
    ("<!-- a --!><link rel=preconnect href=https://t.example><!-- -->", "'--!>'"),
    ("<!--><link rel=preconnect href=https://t.example><!-- -->", "'<!-->'"),
    ("<![CDATA[ x ><link rel=preconnect href=https://t.example>]]>", "CDATA"),
    ('<link rel=preconnect href=https://t.example href=/x>', "attribute twice"),
    ('<iframe src=https://t.example src=/x></iframe>', "attribute twice"),
    ('<link rel="icon" href="/\\t.example/">', "backslash"),
    ('<img src="\\\\t.example/x.png">', "backslash"),
    ('<meta http-equiv="refresh" content="0; https://elsewhere.example/">', "reaches elsewhere.example"),
    ("<meta http-equiv=refresh content=\"0; url='https://elsewhere.example/'\">", "reaches elsewhere.example"),
    ('<image src="https://t.example/x.png">', "t.example, which no service"),
    ('<svg><script href="https://t.example/x.js"></script></svg>', "reaches t.example"),
    ('<link rel="preload" as="image" imagesrcset="https://t.example/a.png 2x">', "reaches t.example"),
    ('<script type="application/x-javascript">alert(1)</script>', "an inline <script>"),
    ('<meta name="referrer" content="unsafe-url">', "referrer"),
    ('<a href="/x" ping="https://t.example/p">x</a>', "reaches t.example"),
    ('<link rel="dns-prefetch" href="//www.youtube-nocookie.com">', "reaches www.youtube-nocookie.com"),
    # ... and what the second hostile read of session 7 slipped past the fixes:
    ("<style></style/><link rel=preconnect href=https://evil.example></style>", "inline <style>"),
    ("<svg><style><p><link rel=preconnect href=https://evil.example></style></svg>", "inline <style>"),
    ("<script type=text/plain></script/><link rel=preconnect href=https://evil.example></script>", "'</script/'"),
    ("<script type=text/plain></script x><link rel=preconnect href=https://evil.example></script>", "data block holding markup"),
    ("<![temp[ > <link rel=preconnect href=https://evil.example> ]]>", "'<!['"),
    ('<link rel=preconnect href="/&#10;/evil.example">', "reaches evil.example"),
    ('<link rel=preconnect href="/\t/evil.example">', "reaches evil.example"),
    ('<link rel=preconnect href="\x01//evil.example">', "reaches evil.example"),
    ('<meta http-equiv="refresh" content="0,https://evil.example/">', "reaches evil.example"),
    ('<meta http-equiv="refresh" content="0 https://evil.example/">', "reaches evil.example"),
    ('<iframe srcdoc="<link rel=preconnect href=https://evil.example>"></iframe>', "srcdoc"),
])
def test_anything_else_that_loads_elsewhere_or_runs_inline_stops_the_run(snippet, words):
    with pytest.raises(AnsibleFilterError) as error:
        website_page(page(snippet), SERVICES, OWN, page="index.html")
    assert "index.html" in str(error.value) and words in str(error.value)


def test_errors_name_the_line():
    with pytest.raises(AnsibleFilterError, match="line 3"):
        website_page("<html>\n<body>\n<img src='https://evil.example/x.gif'>\n</body></html>", SERVICES, OWN)


def test_the_head_and_footer_are_added_once():
    out = website_page(page("<p>x</p>"), [], OWN, head="<!--HEAD-->", footer="<!--FOOT-->")
    assert out.count("<!--HEAD-->") == 1 and out.index("<!--HEAD-->") < out.index("</head>")
    assert out.count("<!--FOOT-->") == 1 and out.index("<!--FOOT-->") < out.index("</body>")


def test_the_head_and_footer_go_before_the_real_end_tags_not_commented_ones():
    text = "<html><head><!-- </head> --><title>t</title></head><body><p>x</p></body><!-- </body> --></html>"
    out = website_page(text, [], OWN, head="<!--HEAD-->", footer="<!--FOOT-->")
    assert out.index("<!--HEAD-->") > out.index("<title>") and out.index("<!--FOOT-->") == out.index("</body>") - 12


def test_a_page_without_head_or_body_still_gets_both():
    out = website_page("<p>fragment</p>", [], OWN, head="<!--HEAD-->", footer="<!--FOOT-->")
    assert out.startswith("<!--HEAD-->") and out.rstrip().endswith("<!--FOOT-->")


# ----------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("name", ["www.cabinet-tilleuls.fr", "cabinet.fr", "a-b.c-d.example"])
def test_good_server_names(name):
    assert server_name_problem(name) == ""


@pytest.mark.parametrize("name", ["", "localhost", "*.cabinet.fr", "Cabinet.fr", "cabinet.fr:443", "10.0.0.1",
                                  "cabinet.fr.", "-x.fr", "a_b.fr", "www.cabinet tilleuls.fr", None, 3])
def test_bad_server_names(name):
    assert server_name_problem(name)


def test_rpps_numbers():
    assert rpps_problem("10101234567") == "" and rpps_problem(10101234567) == ""
    assert rpps_problem("") and rpps_problem("1010123456") and rpps_problem("1010123456a") and rpps_problem(None)


def test_sites_get_their_defaults():
    site = website_sites([{"name": "x", "server_name": "x.fr", "services": [{"name": "yt", "purpose": "video",
                                                                             "hosts": ["WWW.YouTube.com"]}]}])[0]
    assert site["content"] == "static" and site["certificate"] == "acme" and site["server_aliases"] == []
    assert site["services"][0]["label"] == "yt" and site["services"][0]["hosts"] == ["www.youtube.com"]


def test_good_inputs_have_no_problem(tmp_path):
    sites = [{"name": "x", "server_name": "www.x.fr", "source": str(tmp_path), "services": SERVICES}]
    publisher = {"kind": "professional", "name": "Dr X", "address": "1 rue", "phone": "01", "email": "a@x.fr",
                 "profession": "Médecin", "rpps": "10101234567", "ordre": "Ordre", "conventionnement": "S1"}
    hosting = {"name": "H", "address": "2 rue", "phone": "02"}
    settings = {"form_enabled": True, "rights_recipient": "s@x.fr", "acme_email": "w@x.fr",
                "acme_directory": "https://acme.example/dir", "acme_ca_bundle": ""}
    assert website_problems(sites, publisher, hosting, settings) == []
    company = {**publisher, "kind": "company"}
    assert [p.split(":")[0] for p in website_problems(sites, company, hosting, settings)] == [
        "website_privacy_publisher.legal_form", "website_privacy_publisher.rcs", "website_privacy_publisher.capital"]
    two = sites + [{"name": "x", "server_name": "www.x.fr", "certificate": "provided", "source": str(tmp_path)}]
    found = " ".join(website_problems(two, publisher, hosting, settings))
    assert "two sites have the same name" in found and "used twice" in found and "missing certificate" in found


# ----------------------------------------------------------------------------- the rights form
FORM = load_script(ROOT / "roles/website_privacy/files/usr/local/lib/cabinet/cabinet_rights_form.py", "cabinet_rights_form")
GOOD_FORM = {"nom": ["Jeanne Martin"], "contact": ["jeanne.martin@example.org"], "droits": ["acces", "portabilite"],
             "precisions": ["Merci."]}


def test_a_good_request_passes_and_its_mail_holds_every_field():
    values, problems = FORM.validate(GOOD_FORM)
    assert problems == []
    msg = FORM.message(values, {"title": "Cabinet"}, "www.x.fr", "secretariat@x.fr", "formulaire@x.fr")
    body = msg.get_content()
    assert msg["To"] == "secretariat@x.fr" and msg["Reply-To"] == "jeanne.martin@example.org"
    assert "Jeanne Martin" in body and "Accès à mes données" in body and "Portabilité" in body and "Merci." in body
    assert "un mois" in body and "L.1111-7" in body


@pytest.mark.parametrize("change, words", [
    ({"nom": [""]}, "Indiquez votre nom"),
    ({"nom": ["Jeanne\nBcc: x@evil.example"]}, "une ligne"),
    ({"nom": ["x" * 121]}, "120 caractères"),
    ({"contact": ["pas une adresse"]}, "n'est pas valide"),
    ({"contact": ["a@b.fr\r\nBcc: x@evil.example"]}, "n'est pas valide"),
    ({"droits": []}, "au moins un droit"),
    ({"droits": ["tout"]}, "pas reconnu"),
    ({"droits": ["acces", "acces"]}, "pas reconnu"),
    ({"precisions": ["x" * 2001]}, "2000 caractères"),
    ({"nss": ["1 85 05 75 123 456 78"]}, "champs inattendus"),
    ({"nom": ["a", "b"]}, "plusieurs fois"),
])
def test_bad_requests_are_refused_with_a_clear_message(change, words):
    fields = {k: v for k, v in {**GOOD_FORM, **change}.items() if v != []}
    _, problems = FORM.validate(fields)
    assert any(words in p for p in problems), problems


def test_a_phone_number_is_a_way_to_reply():
    values, problems = FORM.validate({**GOOD_FORM, "contact": ["+33 6 12 34 56 78"]})
    assert problems == []
    assert FORM.message(values, {"title": "C"}, "www.x.fr", "s@x.fr", "f@x.fr")["Reply-To"] is None


# ----------------------------------------------------------------------------- certificate watcher
CERTS = load_script(ROOT / "roles/website_privacy/files/usr/local/sbin/cabinet-website-certs")


@pytest.mark.parametrize("days_left, expected", [(90, None), (22, None), (21, "warning"), (10, "warning"),
                                                 (7, "critical"), (-1, "critical")])
def test_the_watcher_alerts_within_the_threshold(monkeypatch, days_left, expected):
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
    monkeypatch.setattr(CERTS, "not_after", lambda path: now + dt.timedelta(days=days_left, minutes=-1))
    found = CERTS.problems({"warning_days": 21, "certificates": [{"site": "s", "server_name": "www.x.fr", "path": "/p"}]}, now)
    assert [f[0] for f in found] == ([expected] if expected else [])
    if expected:
        assert "www.x.fr" in found[0][1]


def test_the_watcher_reports_a_missing_certificate(tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    found = CERTS.problems({"certificates": [{"site": "s", "server_name": "www.x.fr", "path": str(tmp_path / "none.pem")}]}, now)
    assert found and found[0][0] == "critical" and "missing or unreadable" in found[0][1]


def test_the_watcher_reads_a_real_certificate():
    end = CERTS.not_after(str(ROOT / "molecule/website_privacy/files/sobre.crt"))
    assert end.year >= 2035 and end.tzinfo is not None


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


# ----------------------------------------------------------------------------- provided certificates, text fields
FILES = ROOT / "molecule" / "website_privacy" / "files"


def _site(tmp_path, **change):
    return [{"name": "x", "server_name": "sobre-12.test", "source": str(tmp_path), **change}]


def _problems(sites):
    publisher = {"kind": "association", "name": "A", "address": "1 rue", "phone": "01", "email": "a@x.fr"}
    return website_problems(sites, publisher, {"name": "H", "address": "2", "phone": "3"},
                            {"form_enabled": False, "acme_email": "w@x.fr", "acme_directory": "https://a.example/dir"})


def test_a_provided_certificate_must_fit_its_key_and_names(tmp_path):
    cert, key = (FILES / "sobre.crt").read_text(), (FILES / "sobre.key").read_text()
    good = _site(tmp_path, certificate="provided", tls_certificate=cert, tls_private_key=key)
    assert _problems(good) == []
    other_key = (ROOT / "molecule" / "resources" / "files" / "pebble.key").read_text()
    found = " ".join(_problems(_site(tmp_path, certificate="provided", tls_certificate=cert, tls_private_key=other_key)))
    assert "not the certificate's key" in found
    found = " ".join(_problems(_site(tmp_path, server_name="www.ailleurs.fr", certificate="provided",
                                     tls_certificate=cert, tls_private_key=key)))
    assert "does not name www.ailleurs.fr" in found


@pytest.mark.parametrize("change, words", [
    ({"title": "Cabinet\nBcc: x"}, "title: expected one line"),
    ({"services": [{"name": "yt", "purpose": "video", "hosts": ["y.example.com"], "privacy_url": "javascript:alert(1)"}]},
     "privacy_url: expected an https://"),
    ({"services": [{"name": "yt", "purpose": "video", "hosts": ["y.example.com"], "label": "x\ny"}]}, "label: expected one line"),
    ({"services": [{"name": "yt", "purpose": "video", "hosts": ["y.example.com"], "cookies": ["a b"]}]}, "cookies: expected"),
])
def test_text_fields_are_single_lines_and_links_are_https(tmp_path, change, words):
    assert words in " ".join(_problems(_site(tmp_path, **change)))


# ----------------------------------------------------------------------------- the watcher's command
def test_the_watcher_refuses_other_arguments(capsys):
    assert CERTS.main([]) == 2 and CERTS.main(["check", "--config=/tmp/x"]) == 2 and CERTS.main(["purge"]) == 2


def test_the_watcher_alerts_each_problem_and_exits_1(monkeypatch, tmp_path):
    config = tmp_path / "certs.json"
    config.write_text('{"warning_days": 21, "certificates": [{"site": "s", "server_name": "www.x.fr", '
                      f'"path": "{tmp_path / "absent.pem"}"}}, {{"site": "t", "server_name": "www.y.fr", '
                      f'"path": "{ROOT / "molecule/website_privacy/files/sobre.crt"}"}}]}}')
    monkeypatch.setattr(CERTS, "CONFIG", str(config))
    raised = []
    monkeypatch.setattr(CERTS, "alert", lambda practice, severity, title, details, **kw: raised.append((severity, title)))
    assert CERTS.main(["check"]) == 1
    assert raised == [("critical", "Certificate of www.x.fr missing or unreadable")]


def test_a_failed_renewal_alerts_with_the_end_of_certbots_journal(monkeypatch):
    raised = []
    monkeypatch.setattr(CERTS, "alert", lambda practice, severity, title, details, **kw: raised.append((title, details)))
    monkeypatch.setattr(CERTS.subprocess, "run", lambda argv, **kw: type("R", (), {
        "stdout": "\n".join(f"line {i}" for i in range(100)), "returncode": 0})())
    assert CERTS.main(["renewal-failed"]) == 0
    title, details = raised[0]
    assert title == "Website certificate renewal failed" and "line 99" in details and "line 10\n" not in details
