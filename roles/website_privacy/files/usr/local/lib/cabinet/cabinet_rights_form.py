#!/usr/bin/python3
# cabinet_rights_form: the patients' rights request form of the practice's websites (role
# website_privacy). Managed by Ansible; local changes are overwritten.
#
# nginx passes POST /rgpd/demande here through a Unix socket that systemd makes at boot
# (cabinet-rights-form.socket, root:www-data 0660: no local user can listen in its place), with
# the body size and the rate already limited.
# The request is checked, then mailed to the practice through the host's Postfix (the alerting
# role's relay) on 127.0.0.1:25. Nothing is written anywhere: no file, no log of what the
# visitor typed (only "request accepted/refused" and the reason's kind). The service runs as a
# dynamic user in a read-only system (cabinet-rights-form.service).
# Settings: /etc/cabinet/website/rights-form.json
#   {"max_bytes": 8192, "recipient": "...", "sender": "...",
#    "sites": {"www.example.fr": {"title": "...", "phone": "...", "prefix": "/rgpd"}}}
"""Rights requests (GDPR art. 15-21, 7(3)): validate, mail to the practice, keep nothing."""

from __future__ import annotations

import email.message
import email.utils
import html
import json
import re
import os
import smtplib
import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

CONFIG = "/etc/cabinet/website/rights-form.json"
RIGHTS = {
    "acces": "Accès à mes données",
    "rectification": "Rectification de mes données",
    "effacement": "Effacement de mes données",
    "limitation": "Limitation du traitement",
    "opposition": "Opposition au traitement",
    "portabilite": "Portabilité de mes données",
    "retrait": "Retrait de mon consentement",
}
FIELDS = {"nom", "contact", "droits", "precisions"}
EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
PHONE = re.compile(r"^\+?[0-9][0-9 .-]{5,22}[0-9]$")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u2028\u2029]")


def validate(fields: dict[str, list[str]]) -> tuple[dict, list[str]]:
    """The request's values and the problems (in French, for the visitor)."""
    problems = []
    unknown = set(fields) - FIELDS
    if unknown:
        problems.append("Le formulaire contient des champs inattendus.")
    for name in ("nom", "contact", "precisions"):
        if len(fields.get(name, [])) > 1:
            problems.append("Un champ a été envoyé plusieurs fois.")
            break
    nom = (fields.get("nom") or [""])[0].strip()
    contact = (fields.get("contact") or [""])[0].strip()
    precisions = (fields.get("precisions") or [""])[0].strip().replace("\r\n", "\n")
    droits = fields.get("droits", [])
    if not nom:
        problems.append("Indiquez votre nom.")
    elif len(nom) > 120 or CONTROL.search(nom) or "\n" in nom or "\r" in nom:
        problems.append("Le nom doit tenir sur une ligne de 120 caractères au plus.")
    if not contact:
        problems.append("Indiquez une adresse électronique ou un numéro de téléphone pour la réponse.")
    elif len(contact) > 254 or not (EMAIL.match(contact) or PHONE.match(contact)):
        problems.append("L'adresse électronique ou le numéro de téléphone n'est pas valide.")
    if not droits:
        problems.append("Cochez au moins un droit à exercer.")
    elif any(d not in RIGHTS for d in droits) or len(set(droits)) != len(droits):
        problems.append("Un droit coché n'est pas reconnu.")
    if len(precisions) > 2000 or CONTROL.search(precisions.replace("\n", "").replace("\t", "")):
        problems.append("Les précisions doivent faire 2000 caractères au plus, sans caractères de contrôle.")
    return {"nom": nom, "contact": contact, "droits": droits, "precisions": precisions}, problems


def message(values: dict, site: dict, server_name: str, recipient: str, sender: str) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    if EMAIL.match(values["contact"]):
        msg["Reply-To"] = values["contact"]
    msg["Subject"] = f"[{site['title']}] Demande d'exercice de droits (RGPD)"
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=server_name)
    rights = "\n".join(f"  - {RIGHTS[d]}" for d in values["droits"])
    msg.set_content(
        f"Demande reçue par le formulaire du site {server_name}.\n\n"
        f"Nom : {values['nom']}\n"
        f"Pour répondre : {values['contact']}\n"
        f"Droit(s) exercé(s) :\n{rights}\n\n"
        f"Précisions :\n{values['precisions'] or '(aucune)'}\n\n"
        "À traiter dans un délai d'un mois, prolongeable de deux mois en informant la personne\n"
        "dans le premier mois (art. 12.3 RGPD). Un justificatif d'identité ne peut être demandé\n"
        "qu'en cas de doute raisonnable (art. 12.6). L'accès au dossier médical suit l'article\n"
        "L.1111-7 du code de la santé publique.\n")
    return msg


def page(site: dict, title: str, body: str) -> bytes:
    prefix = site.get("prefix", "/rgpd")
    return (
        "<!DOCTYPE html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)} – {html.escape(site['title'])}</title>"
        f"<link rel=\"stylesheet\" href=\"{prefix}/assets/cabinet-site.css\"></head>"
        f"<body class=\"cabinet-page\"><header class=\"cabinet-header\"><a href=\"/\">{html.escape(site['title'])}</a></header>"
        f"<main id=\"contenu\"><h1>{html.escape(title)}</h1>{body}"
        f"<p><a href=\"{prefix}/droits.html\">Retour au formulaire</a> · <a href=\"/\">Accueil</a></p></main>"
        f"<footer class=\"cabinet-legal\"><nav aria-label=\"Informations légales\"><ul>"
        f"<li><a href=\"{prefix}/mentions-legales.html\">Mentions légales</a></li>"
        f"<li><a href=\"{prefix}/confidentialite.html\">Politique de confidentialité</a></li>"
        f"<li><a href=\"{prefix}/cookies.html\">Cookies</a></li></ul></nav></footer></body></html>\n"
    ).encode("utf-8")


class Handler(BaseHTTPRequestHandler):
    server_version = "cabinet-rights-form"
    sys_version = ""
    config: dict = {}
    # A client that sends slowly is dropped instead of holding one of the service's threads.
    timeout = 15

    def address_string(self) -> str:  # a Unix socket's peer has no address
        return "nginx"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        # Nothing the visitor sent is logged; nginx's access log has the request line.
        return

    def reply(self, status: int, site: dict, title: str, body: str) -> None:
        content = page(site, title, body)
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(content)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        cfg = self.config
        server_name = (self.headers.get("Host") or "").split(":")[0].lower()
        site = cfg["sites"].get(server_name)
        if site is None:
            self.send_error(400)
            return
        origin = self.headers.get("Origin")
        # The site's own page, on whatever port the visitor reached it (the demo publishes 8443).
        if origin is not None and not re.fullmatch(rf"https://{re.escape(server_name)}(:\d{{1,5}})?", origin.lower()):
            print("refused: cross-site post", flush=True)
            self.reply(403, site, "Demande refusée", "<p>La demande doit être envoyée depuis le formulaire de ce site.</p>")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            self.reply(415, site, "Demande refusée", "<p>Envoyez la demande depuis le formulaire du site.</p>")
            return
        try:
            length = int(self.headers.get("Content-Length") or "-1")
        except ValueError:
            length = -1
        if length < 0 or length > cfg["max_bytes"]:
            print("refused: size", flush=True)
            self.reply(413, site, "Demande trop longue",
                       "<p class=\"cabinet-errors\">Votre demande est trop longue. Raccourcissez les précisions.</p>")
            return
        raw = self.rfile.read(length)
        try:
            fields = parse_qs(raw.decode("utf-8", "strict"), keep_blank_values=False, max_num_fields=20, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            fields = None
        values, problems = validate(fields) if fields is not None else ({}, ["Le formulaire n'a pas pu être lu."])
        if problems:
            print(f"refused: {len(problems)} problem(s)", flush=True)
            items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
            self.reply(400, site, "Demande incomplète",
                       f"<div class=\"cabinet-errors\" role=\"alert\"><p>La demande n'a pas été envoyée :</p><ul>{items}</ul></div>")
            return
        try:
            with smtplib.SMTP("127.0.0.1", 25, timeout=30) as smtp:
                smtp.send_message(message(values, site, server_name, cfg["recipient"], cfg["sender"]))
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            print(f"error: the local mail server did not take the request ({type(exc).__name__})", file=sys.stderr, flush=True)
            self.reply(503, site, "Demande non transmise",
                       "<p class=\"cabinet-errors\" role=\"alert\">Votre demande n'a pas pu être transmise. "
                       f"Merci de contacter le cabinet par téléphone au {html.escape(site.get('phone', ''))}.</p>")
            return
        print("accepted: request mailed to the practice", flush=True)
        self.reply(200, site, "Demande transmise",
                   "<p>Votre demande a été transmise au cabinet, qui vous répondra dans un délai d'un mois "
                   "(prolongeable de deux mois ; vous en seriez alors informé).</p>")

    def do_GET(self) -> None:  # noqa: N802
        self.send_error(405)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> int:
    with open(CONFIG, encoding="utf-8") as handle:
        Handler.config = json.load(handle)
    # systemd's socket activation: the listening socket is file descriptor 3.
    if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_PID") != str(os.getpid()):
        print("error: start me through cabinet-rights-form.socket (systemd socket activation)", file=sys.stderr)
        return 2
    server = Server(None, Handler, bind_and_activate=False)
    server.socket = socket.socket(fileno=3)
    print("serving the rights form on the socket systemd handed over", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
