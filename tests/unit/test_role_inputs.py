"""Bad input stops a role before any change, with a message that names the variable.

Each case runs the role against the controller in check mode with cabinet_validate_only, as
the first play of site.yml (playbooks/validate.yml) runs it: the platform check, the role's
argument specs and its validation, then `meta: end_role`. No --tags: a validation task that
changed something would show in the recap, and a validation that failed to stop would reach
end_role and the run would succeed. The test asserts: the run failed, it failed in the role's
validation (its argument specs or its "Validate" task), the message names the variable and
what was expected, and nothing changed. Another test checks that validation and end_role are
the first things every role's tasks/main.yml does, and one runs a whole site.yml.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ansible_env, playbook_tasks

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "tests" / "unit" / "roles" / "validate_role.yml"

ALERTING = {
    "alerting_msp_address": "alertes@msp.example",
    "alerting_practice_name": "Cabinet des Tilleuls",
    "alerting_relay_host": "smtp.msp.example",
    "alerting_relay_user": "relay",
    "alerting_relay_password": "Vq7#mWk2$pLx9@rTz4",
}
GOOD = {
    "alerting": ALERTING,
    "password_policy": {**ALERTING},  # alerting is a dependency (the failed-login watch alerts)
    # auto_updates depends on alerting, whose variables it therefore needs too.
    "auto_updates": {**ALERTING, "auto_updates_extra_origins": ["origin=MSP,label=MSP tools"],
                     "auto_updates_package_blacklist": ["^postgresql-"]},
    "ups_monitoring": {**ALERTING, "ups_monitoring_primary_password": "Hd4!nQ8@wZ3%kP7&bR2"},
    "antivirus": {**ALERTING, "antivirus_scan_paths": ["/srv/patients", "/home"],
                  "antivirus_private_mirrors": ["http://clamav.msp.example/"]},
    # The harness's inventory has no backup_offsite group, so the good case backs up to its
    # local disk only; the off-site server's membership is checked by a case below.
    "backup": {**ALERTING, "backup_passphrase": "Rc5!wK9@qT3#mV7$zH2", "backup_local_device": "LABEL=CABINET-BKP",
               "backup_offsite_enabled": False, "backup_sources": ["/srv/patients", "/home"],
               "backup_database_dumps": [{"name": "patients", "command": "/usr/bin/mysqldump --all-databases"}]},
}
WEB_SITE = {"name": "tilleuls", "server_name": "www.cabinet-tilleuls.fr", "content": "static",
            "source": str(ROOT / "molecule" / "website_privacy" / "files" / "site-tilleuls"),
            "services": [{"name": "youtube", "purpose": "video", "hosts": ["www.youtube-nocookie.com"]}]}
WEB = {**ALERTING,
       "website_privacy_sites": [WEB_SITE],
       "website_privacy_publisher": {"kind": "professional", "name": "Dr Marie Durand", "address": "12 rue des Tilleuls, Lyon",
                                     "phone": "04 72 00 00 00", "email": "contact@cabinet-tilleuls.fr",
                                     "profession": "Médecin généraliste", "rpps": "10101234567",
                                     "ordre": "Ordre des médecins du Rhône", "conventionnement": "Secteur 1"},
       "website_privacy_hosting": {"name": "Hébergeur SAS", "address": "1 rue du Port, Lyon", "phone": "04 72 11 11 11"},
       "website_privacy_rights_recipient": "secretariat@cabinet-tilleuls.fr",
       "website_privacy_acme_email": "webmaster@msp.example"}
GOOD["website_privacy"] = WEB
GOOD["hardware_health"] = {**ALERTING, "hardware_health_purchase_date": "2023-03-15", "hardware_health_warranty_end": "2028-03-15",
                           "hardware_health_contract_end": "2027-06-30", "hardware_health_contract_provider": "MSP",
                           "hardware_health_smart_devices": [{"device": "/dev/disk/by-id/usb-WD_Elements_25A3-0:0", "type": "sat"}]}


def controller_listeners() -> list[str]:
    """The controller's own listening services ("53/udp"...), which the harness's good case
    lists as closed on purpose: the harness runs on the controller, whose services vary."""
    from cabinet_baseline import listeners_not_covered  # noqa: PLC0415
    out = subprocess.run(["ss", "-H", "-l", "-n", "-t", "-u"], capture_output=True, text=True, check=True).stdout
    return listeners_not_covered(out.splitlines(), [], [])


def controller_forwards() -> bool:
    """Whether the controller forwards packets (podman's networks turn it on)."""
    return Path("/proc/sys/net/ipv4/ip_forward").read_text(encoding="utf-8").strip() == "1"


def controller_slaac() -> bool:
    """Whether the controller takes its IPv6 default route from router advertisements."""
    out = subprocess.run(["ip", "-6", "route", "show", "default", "proto", "ra"], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


# system_baseline depends on alerting. The harness runs on the controller: its groups, its
# ssh -Q, its resolver, its listening services and its network stand for the host's.
GOOD["system_baseline"] = {**ALERTING, "system_baseline_firewall_ssh_sources": ["192.0.2.0/24", "2001:db8::/32"],
                           "system_baseline_firewall_closed_ports": controller_listeners(),
                           "system_baseline_kernel_allow_forwarding": controller_forwards(),
                           "system_baseline_kernel_ipv6_router_advertisements": controller_slaac(),
                           "system_baseline_firewall_extra_rules": [
                               {"name": "pacs", "port": 104, "proto": "tcp", "from": ["192.0.2.50"],
                                "description": "the imaging device's DICOM sends"}],
                           "system_baseline_integrity_exclude_paths": ["/srv/pacs", "/var/lib/docker", "/opt/logiciel_medical/cache.d"]}


def _web(**site: object) -> dict:
    """website_privacy_sites with the one site changed (None removes a key)."""
    changed = {k: v for k, v in {**WEB_SITE, **site}.items() if v is not None}
    return {"website_privacy_sites": [changed]}


UPS_SECONDARY = {"ups_monitoring_secondary_password": "Jm6^tC1!xV9@sG5*yN8"}
UPS_NETSERVER = {"ups_monitoring_mode": "netserver", "ups_monitoring_listen_addresses": ["192.0.2.10"], **UPS_SECONDARY}
UPS_NETCLIENT = {"ups_monitoring_mode": "netclient", "ups_monitoring_server": "srv-tilleuls", **UPS_SECONDARY}

# Log forwarding on, with a log host and a certificate of the right shape: each case below
# changes one thing.
LOG_ON = {"system_baseline_log_forwarding_enabled": True, "system_baseline_log_host": "logs.msp.example",
          "system_baseline_log_ca_cert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}
CASES = [
    # role, overrides (None removes the variable), variable named, words expected
    ("alerting", {"alerting_msp_address": None}, "alerting_msp_address", "required"),
    ("alerting", {"alerting_msp_address": "msp.example"}, "alerting_msp_address", "expected one address"),
    ("alerting", {"alerting_msp_address": "Support <it@msp.example>"}, "alerting_msp_address", "expected one address"),
    ("alerting", {"alerting_from_address": "nobody"}, "alerting_from_address", "expected one address"),
    ("alerting", {"alerting_relay_port": 70000}, "alerting_relay_port", "1 to 65535"),
    ("alerting", {"alerting_relay_port": 0}, "alerting_relay_port", "1 to 65535"),
    ("alerting", {"alerting_relay_port": "smtp"}, "alerting_relay_port", "int"),
    ("alerting", {"alerting_relay_host": "smtp_msp"}, "alerting_relay_host", "host name"),
    ("alerting", {"alerting_relay_tls": "none"}, "alerting_relay_tls", "starttls"),
    ("alerting", {"alerting_relay_password": ""}, "alerting_relay_password", "expected a password"),
    ("alerting", {"alerting_practice_name": "  "}, "alerting_practice_name", "non-empty"),
    ("alerting", {"alerting_queue_lifetime_days": 0}, "alerting_queue_lifetime_days", "1 to 100"),
    ("alerting", {"alerting_relay_tls_ca_cert": "not a pem"}, "alerting_relay_tls_ca_cert", "BEGIN CERTIFICATE"),
    ("alerting", {"alerting_relay_password": "Relais2026!"}, "alerting_relay_password", "too weak"),
    ("alerting", {"alerting_relay_password": "MotDePasse-Cabinet-2026!x"}, "alerting_relay_password", "too obvious"),
    ("alerting", {"alerting_relay_password": "Tilleuls#Vq7mWk2$pLx9"}, "alerting_relay_password",
     "a word from the practice's own names"),
    ("alerting", {"alerting_relay_password": "replace me with the relay account's password"},
     "alerting_relay_password", "placeholder"),
    ("auto_updates", {"auto_updates_reboot_time": "3:30"}, "auto_updates_reboot_time", "expected HH:MM"),
    ("auto_updates", {"auto_updates_reboot_time": "24:00"}, "auto_updates_reboot_time", "expected HH:MM"),
    ("auto_updates", {"auto_updates_upgrade_time": "02h00"}, "auto_updates_upgrade_time", "expected HH:MM"),
    ("auto_updates", {"auto_updates_extra_origins": ["Debian-Security"]}, "auto_updates_extra_origins", "key=value"),
    ("auto_updates", {"auto_updates_extra_origins": ["origin=MSP,flavour=x"]}, "auto_updates_extra_origins", "key=value"),
    ("auto_updates", {"auto_updates_extra_origins": "origin=MSP"}, "auto_updates_extra_origins", "expected a YAML list"),
    ("auto_updates", {"auto_updates_package_blacklist": "^libc6$"}, "auto_updates_package_blacklist", "expected a YAML list"),
    ("auto_updates", {"auto_updates_package_blacklist": ["libc6["]}, "auto_updates_package_blacklist", "not a valid"),
    ("auto_updates", {"auto_updates_needrestart_mode": "i"}, "auto_updates_needrestart_mode", "a, l"),
    ("auto_updates", {"auto_updates_reboot_command": "reboot"}, "auto_updates_reboot_command", "absolute"),
    ("auto_updates", {"auto_updates_pending_security_max_days": 0}, "auto_updates_pending_security_max_days", "1 to 60"),
    ("auto_updates", {"auto_updates_random_delay_minutes": -5}, "auto_updates_random_delay_minutes", "0 to 240"),
    ("password_policy", {"password_policy_min_length": 0}, "password_policy_min_length", "8 to 128"),
    ("password_policy", {"password_policy_min_classes": 5}, "password_policy_min_classes", "1 to 4"),
    ("password_policy", {"password_policy_min_classes": "all"}, "password_policy_min_classes", "int"),
    ("password_policy", {"password_policy_min_length": 10}, "password_policy_min_entropy_bits", "bits, below"),
    ("password_policy", {"password_policy_min_length": 12, "password_policy_min_classes": 3},
     "password_policy_min_entropy_bits", "14 of 3"),
    ("password_policy", {"password_policy_faillock_deny": 0}, "password_policy_faillock_deny", "1 to 20"),
    ("password_policy", {"password_policy_pwhistory_remember": 0}, "password_policy_pwhistory_remember", "1 to 24"),
    ("password_policy", {"password_policy_login_burst_failures": 2}, "password_policy_login_burst_failures", "5 to 10000"),
    ("password_policy", {"password_policy_login_burst_minutes": 5}, "password_policy_login_burst_minutes", "15 to 1440"),
    ("password_policy", {"password_policy_login_watch_enabled": "y"}, "password_policy_login_watch_enabled",
     "expected true or false"),
    ("password_policy", {"password_policy_privileged_accounts": "admin"}, "password_policy_privileged_accounts",
     "expected a YAML list"),
    # inventories/example before issue 12: the account Ansible connects as, given a maximum age.
    ("password_policy", {"ansible_user": "msp-admin", "password_policy_privileged_accounts": ["msp-admin"],
                         "password_policy_privileged_max_days": 365}, "password_policy_privileged_accounts",
     "msp-admin is an account Ansible connects as"),
    ("password_policy", {"ansible_user": "msp-admin", "password_policy_privileged_accounts": ["msp-admin"],
                         "password_policy_privileged_max_days": 365}, "password_policy_privileged_accept_lockout",
     "another way in"),
    # The argument specs take "y" for true, ansible-core's bool filter for false: refused.
    ("password_policy", {"password_policy_verify_enabled": "y"}, "password_policy_verify_enabled",
     "expected true or false"),
    ("alerting", {"alerting_relay_tls_verify": "t"}, "alerting_relay_tls_verify", "expected true or false"),
    ("password_policy", {"password_policy_privileged_max_days": 7}, "password_policy_privileged_max_days",
     "0 (no maximum) or 30 to 3650"),
    ("password_policy", {"password_policy_privileged_accept_lockout": "msp-admin"},
     "password_policy_privileged_accept_lockout", "expected a YAML list"),
    ("ups_monitoring", {"ups_monitoring_mode": "master"}, "ups_monitoring_mode", "standalone, netserver, netclient"),
    ("ups_monitoring", {"ups_monitoring_driver": ""}, "ups_monitoring_driver", "expected the NUT driver"),
    ("ups_monitoring", {"ups_monitoring_driver": "usbhid ups"}, "ups_monitoring_driver", "expected the NUT driver"),
    ("ups_monitoring", {"ups_monitoring_description": 'Onduleur "baie"'}, "ups_monitoring_description", "double quotes"),
    ("ups_monitoring", {"ups_monitoring_port": " "}, "ups_monitoring_port", "expected the port"),
    ("ups_monitoring", {"ups_monitoring_ups_name": "onduleur accueil"}, "ups_monitoring_ups_name", "expected a UPS name"),
    ("ups_monitoring", {**UPS_NETCLIENT, "ups_monitoring_server": ""}, "ups_monitoring_server", "host name"),
    ("ups_monitoring", {**UPS_NETSERVER, "ups_monitoring_listen_addresses": ["127.0.0.1"]},
     "ups_monitoring_listen_addresses", "loopback only"),
    ("ups_monitoring", {"ups_monitoring_listen_addresses": ["srv.local"]}, "ups_monitoring_listen_addresses",
     "expected IP addresses"),
    ("ups_monitoring", {"ups_monitoring_listen_addresses": ["0.0.0.0"]}, "ups_monitoring_listen_addresses", "not the wildcard"),
    ("ups_monitoring", {"ups_monitoring_listen_port": 0}, "ups_monitoring_listen_port", "1 to 65535"),
    ("ups_monitoring", {"ups_monitoring_primary_password": ""}, "ups_monitoring_primary_password", "expected a secret"),
    ("ups_monitoring", {"ups_monitoring_primary_password": "Onduleur2026!"}, "ups_monitoring_primary_password", "too obvious"),
    ("ups_monitoring", {"ups_monitoring_primary_password": "Hd4!nQ8@ wZ3%kP7&bR2"}, "ups_monitoring_primary_password",
     "no spaces, quotes"),
    ("ups_monitoring", {**UPS_NETSERVER, "ups_monitoring_secondary_password": "Hd4!nQ8@wZ3%kP7&bR2"},
     "ups_monitoring_primary_password", "reused"),
    ("ups_monitoring", {**UPS_NETCLIENT, "ups_monitoring_secondary_password": None}, "ups_monitoring_secondary_password",
     "expected a secret"),
    ("ups_monitoring", {"ups_monitoring_secondary_user": "upsmon-primary"}, "ups_monitoring_secondary_user", "other than"),
    ("ups_monitoring", {"ups_monitoring_battery_shutdown_minutes": -1}, "ups_monitoring_battery_shutdown_minutes",
     "0.25 (15 s) to 240"),
    ("ups_monitoring", {"ups_monitoring_battery_shutdown_minutes": 0.1}, "ups_monitoring_battery_shutdown_minutes",
     "0.25 (15 s) to 240"),
    ("ups_monitoring", {"ups_monitoring_battery_shutdown_minutes": 241}, "ups_monitoring_battery_shutdown_minutes",
     "0.25 (15 s) to 240"),
    ("ups_monitoring", {"ups_monitoring_pre_shutdown_commands": ["systemctl stop postgresql"]},
     "ups_monitoring_pre_shutdown_commands", "absolute path"),
    ("ups_monitoring", {"ups_monitoring_pre_shutdown_commands": "/usr/bin/systemctl stop postgresql"},
     "ups_monitoring_pre_shutdown_commands", "expected a YAML list"),
    ("ups_monitoring", {"ups_monitoring_shutdown_command": "shutdown -h now"}, "ups_monitoring_shutdown_command", "absolute"),
    ("ups_monitoring", {"ups_monitoring_poll_seconds": 5, "ups_monitoring_deadtime_seconds": 10},
     "ups_monitoring_deadtime_seconds", "three times"),
    ("ups_monitoring", {"ups_monitoring_driver_options": {"Vendor ID": "0463"}}, "ups_monitoring_driver_options",
     "setting names"),
    ("antivirus", {"antivirus_scan_paths": ["srv/patients"]}, "antivirus_scan_paths", "expected absolute paths"),
    ("antivirus", {"antivirus_scan_paths": "/srv"}, "antivirus_scan_paths", "expected a YAML list"),
    ("antivirus", {"antivirus_quarantine_dir": "quarantine"}, "antivirus_quarantine_dir", "expected an absolute path"),
    ("antivirus", {"antivirus_quarantine_dir": "/srv/patients/quarantaine"}, "antivirus_quarantine_dir",
     "outside every scanned folder"),
    ("antivirus", {"antivirus_scan_paths": ["/"]}, "antivirus_quarantine_dir", "outside every scanned folder"),
    ("antivirus", {"antivirus_onaccess_paths": ["/var/lib/cabinet"]}, "antivirus_quarantine_dir", "overlaps /var/lib/cabinet"),
    ("antivirus", {"antivirus_exclude_paths": ["tmp"]}, "antivirus_exclude_paths", "expected absolute paths"),
    ("antivirus", {"antivirus_private_mirrors": ["clamav.msp.example"]}, "antivirus_private_mirrors", "http(s) URLs"),
    ("antivirus", {"antivirus_scan_time": "4h15"}, "antivirus_scan_time", "expected HH:MM"),
    ("antivirus", {"antivirus_signature_max_age_hours": 0}, "antivirus_signature_max_age_hours", "6 to 720"),
    ("antivirus", {"antivirus_freshclam_checks_per_day": 100}, "antivirus_freshclam_checks_per_day", "1 to 50"),
    ("antivirus", {"antivirus_memory_check": "ignore"}, "antivirus_memory_check", "fail, warn"),
    ("backup", {"backup_local_enabled": False}, "backup_local_enabled, backup_offsite_enabled", "no repository is enabled"),
    ("backup", {"backup_local_device": ""}, "backup_local_device", "expected the backup disk as UUID="),
    ("backup", {"backup_local_device": "/dev/sdb1"}, "backup_local_device", "expected the backup disk as UUID="),
    ("backup", {"backup_retention_daily": 0}, "backup_retention_daily", "expected 1 to 1000"),
    ("backup", {"backup_retention_monthly": 0}, "backup_retention_monthly", "expected 1 to 1000"),
    ("backup", {"backup_sources": ["srv/patients"]}, "backup_sources", "expected absolute paths"),
    ("backup", {"backup_sources": []}, "backup_sources", "non-empty"),
    ("backup", {"backup_sources": ["/"]}, "backup_sources", "not /"),
    ("backup", {"backup_local_mountpoint": "mnt/backup"}, "backup_local_mountpoint", "expected an absolute folder"),
    ("backup", {"backup_restore_test_dir": "tmp"}, "backup_restore_test_dir", "expected an absolute folder"),
    ("backup", {"backup_local_subdir": "../etc"}, "backup_local_subdir", "without .."),
    ("backup", {"backup_offsite_enabled": True, "backup_offsite_server": "backup1.msp.example"}, "backup_offsite_server",
     "expected a host of group backup_offsite"),
    ("backup", {"backup_passphrase": ""}, "backup_passphrase", "expected a secret"),
    # The relay password again: alerting (a dependency) vets its secret first and names it.
    ("backup", {"backup_passphrase": "Vq7#mWk2$pLx9@rTz4"}, "alerting_relay_password", "reused"),
    ("backup", {"backup_encryption": "none"}, "backup_encryption", "repokey-blake2, repokey"),
    ("backup", {"backup_database_dumps": [{"name": "patients db", "command": "/usr/bin/true"}]}, "backup_database_dumps",
     "expected names"),
    ("backup", {"backup_database_dumps": [{"name": "patients"}]}, "backup_database_dumps", "{name, command}"),
    ("backup", {"backup_time": "1h30"}, "backup_time", "expected HH:MM"),
    ("backup", {"backup_verify_time": "dimanche 3h"}, "backup_verify_time", "systemd calendar event"),
    ("backup", {"backup_max_age_hours": 12}, "backup_max_age_hours", "expected 25 to 720"),
    ("backup", {"backup_offsite_storage_quota": "500GB"}, "backup_offsite_storage_quota", "expected a size in G, T or P"),
    ("backup", {"backup_offsite_storage_quota": "0G"}, "backup_offsite_storage_quota", "expected a size in G, T or P"),
    ("backup", {"backup_compression": "gzip"}, "backup_compression", "expected a borg compression"),
    ("backup", {"backup_server_root": "/"}, "backup_server_root", "other than /"),
    ("auto_updates", {"auto_updates_reboot_alert_after_hours": -1}, "auto_updates_reboot_alert_after_hours", "0 to 720"),
    ("auto_updates", {"auto_updates_reboot_alert_after_hours": 721}, "auto_updates_reboot_alert_after_hours", "0 to 720"),
    ("ups_monitoring", {"ups_monitoring_realert_hours": 0}, "ups_monitoring_realert_hours", "1 to 720"),
    ("ups_monitoring", {"ups_monitoring_realert_hours": 721}, "ups_monitoring_realert_hours", "1 to 720"),
    # website_privacy: the issue's cases, then more.
    ("website_privacy", {"website_privacy_publisher": {**WEB["website_privacy_publisher"], "rpps": ""}},
     "website_privacy_publisher.rpps", "RPPS number, 11 digits"),
    ("website_privacy", {"website_privacy_publisher": {**WEB["website_privacy_publisher"], "rpps": "1010123"}},
     "website_privacy_publisher.rpps", "RPPS number, 11 digits"),
    ("website_privacy", {"website_privacy_hosting": {"name": "", "address": "", "phone": ""}},
     "website_privacy_hosting.name", "host's identity"),
    ("website_privacy", _web(services=[{"name": "youtube", "hosts": ["www.youtube-nocookie.com"]}]), "purpose", "required"),
    ("website_privacy", _web(services=[{"name": "youtube", "purpose": "video"}]), "hosts", "required"),
    ("website_privacy", _web(services=[{"name": "youtube", "purpose": "video", "hosts": []}]), "hosts",
     "expected the hosts the service loads from"),
    ("website_privacy", _web(services=[{"name": "pub", "purpose": "advertising", "hosts": ["ads.example.com"]}]), "purpose",
     "analytics"),
    ("website_privacy", _web(server_name="www.cabinet tilleuls.fr"), "server_name", "fully qualified host name"),
    ("website_privacy", _web(server_name="*.cabinet-tilleuls.fr"), "server_name", "no wildcard"),
    ("website_privacy", _web(server_name="Cabinet-Tilleuls"), "server_name", "fully qualified host name"),
    ("website_privacy", _web(certificate="provided"), "tls_certificate", "missing certificate"),
    ("website_privacy", _web(certificate="provided", server_name="sobre-12.test",
                             tls_certificate=(ROOT / "molecule/website_privacy/files/sobre.crt").read_text(),
                             tls_private_key=(ROOT / "molecule/resources/files/pebble.key").read_text()),
     "tls_certificate", "not the certificate's key"),
    ("website_privacy", _web(source="/nonexistent/site"), "source", "not found"),
    ("website_privacy", _web(content="proxy", upstream="http://127.0.0.1:8080/wordpress"), "upstream", "no path"),
    ("website_privacy", _web(name="Tilleuls!"), "website_privacy_sites[0].name", "lower-case letters"),
    ("website_privacy", _web(services=[{"name": "self", "purpose": "video", "hosts": ["www.cabinet-tilleuls.fr"]}]),
     "hosts", "own names"),
    ("website_privacy", {"website_privacy_rights_recipient": ""}, "website_privacy_rights_recipient", "expected one address"),
    ("website_privacy", {"website_privacy_acme_email": "webmaster"}, "website_privacy_acme_email", "expected one address"),
    ("website_privacy", {"website_privacy_consent_days": 395}, "website_privacy_consent_days", "1 to 183"),
    ("website_privacy", {"website_privacy_form_enabled": "oui"}, "website_privacy_form_enabled", "not a valid boolean"),
    # system_baseline: the issue's cases (a group that does not exist, a bad port, an algorithm
    # the release does not know), then more.
    ("system_baseline", {"system_baseline_ssh_allow_groups": ["lab-no-such-group"]}, "system_baseline_ssh_allow_groups",
     "does not exist"),
    ("system_baseline", {"system_baseline_ssh_allow_groups": []}, "system_baseline_ssh_allow_groups", "non-empty list"),
    ("system_baseline", {"system_baseline_firewall_extra_rules": [{"name": "pacs", "port": 70000, "from": "any"}]},
     "system_baseline_firewall_extra_rules", "port expected as a number from 1 to 65535"),
    ("system_baseline", {"system_baseline_firewall_extra_rules": [{"name": "pacs", "port": "104;drop", "from": "any"}]},
     "system_baseline_firewall_extra_rules", "port expected as a number from 1 to 65535"),
    ("system_baseline", {"system_baseline_firewall_extra_rules": [{"name": "pacs", "port": 104, "proto": "icmp", "from": "any"}]},
     "system_baseline_firewall_extra_rules", "proto expected as tcp or udp"),
    ("system_baseline", {"system_baseline_firewall_extra_rules": [{"name": "pacs", "port": 104, "from": ["10.0.0.0/33"]}]},
     "system_baseline_firewall_extra_rules", "neither 'any', an address, a network"),
    ("system_baseline", {"system_baseline_firewall_extra_rules": [{"name": "pacs", "port": 104}]},
     "system_baseline_firewall_extra_rules", "from expected as 'any'"),
    ("system_baseline", {"system_baseline_firewall_ssh_sources": ["192.0.2.0/24; accept"]}, "system_baseline_firewall_ssh_sources",
     "neither 'any', an address, a network"),
    ("system_baseline", {"system_baseline_ssh_kex_algorithms": ["curve25519-sha256", "lab-unknown-kex@example.org"]},
     "system_baseline_ssh_kex_algorithms", "does not know lab-unknown-kex@example.org"),
    ("system_baseline", {"system_baseline_ssh_ciphers": ["aes128-cbc-nonexistent"]}, "system_baseline_ssh_ciphers", "does not know"),
    ("system_baseline", {"system_baseline_ssh_extra_settings": {"PermitRootLogin": "yes"}}, "system_baseline_ssh_extra_settings",
     "set by the role itself"),
    ("system_baseline", {"system_baseline_ssh_extra_settings": {"Match": "User x"}}, "system_baseline_ssh_extra_settings",
     "set by the role itself"),
    ("system_baseline", {"system_baseline_ssh_extra_settings": {"X11Forwarding": "yes"}}, "system_baseline_ssh_extra_settings",
     "set by the role itself"),
    ("system_baseline", {"system_baseline_ssh_extra_settings": {"X11 UseLocalhost": "yes"}}, "system_baseline_ssh_extra_settings",
     "a mapping of sshd keywords"),
    ("system_baseline", {"system_baseline_ssh_extra_settings": {"AllowUsers": "a\nPermitRootLogin yes"}},
     "system_baseline_ssh_extra_settings", "one-line values"),
    ("system_baseline", {"system_baseline_ssh_port": 0}, "system_baseline_ssh_port", "1 to 65535"),
    ("system_baseline", {"system_baseline_ssh_max_auth_tries": 10}, "system_baseline_ssh_max_auth_tries", "1 to 6"),
    ("system_baseline", {"system_baseline_journald_max_use": "lots"}, "system_baseline_journald_max_use", "500M or 2G"),
    ("system_baseline", {"system_baseline_umask": "022"}, "system_baseline_umask", "027 or 077"),
    ("system_baseline", {"system_baseline_time_servers": []}, "system_baseline_time_servers", "one or more host names"),
    ("system_baseline", {"system_baseline_time_servers": ["ntp.msp.example\nserver evil.example"]},
     "system_baseline_time_servers", "one or more host names"),
    ("system_baseline", {"system_baseline_time_servers": ["ntp.msp.example\n"]}, "system_baseline_time_servers",
     "one or more host names"),
    ("system_baseline", {"system_baseline_time_servers": ["ntp.msp.example iburst maxpoll 20"]},
     "system_baseline_time_servers", "one or more host names"),
    ("system_baseline", {"system_baseline_time_servers": "ntp.msp.example"}, "system_baseline_time_servers",
     "one or more host names"),
    ("system_baseline", {"system_baseline_time_alert_after_minutes": -5}, "system_baseline_time_alert_after_minutes",
     "0 to 10080"),
    ("system_baseline", {"system_baseline_time_realert_hours": 0}, "system_baseline_time_realert_hours", "1 to 720"),
    ("system_baseline", {"system_baseline_time_enabled": "oui"}, "system_baseline_time_enabled", "not a valid boolean"),
    ("system_baseline", {"system_baseline_root_max_days": 9999}, "system_baseline_root_max_days", "30 to 365"),
    ("system_baseline", {"system_baseline_integrity_check_time": "4:30"}, "system_baseline_integrity_check_time", "HH:MM"),
    ("system_baseline", {"system_baseline_integrity_check_time": "04:30\n"}, "system_baseline_integrity_check_time", "HH:MM"),
    ("system_baseline", {"system_baseline_integrity_check_time": "04:30\nExecStart=/bin/sh"},
     "system_baseline_integrity_check_time", "HH:MM"),
    ("system_baseline", {"system_baseline_integrity_realert_days": 0}, "system_baseline_integrity_realert_days", "1 to 90"),
    ("system_baseline", {"system_baseline_integrity_exclude_paths": ["var/lib/app"]}, "system_baseline_integrity_exclude_paths",
     "not a plain absolute path"),
    ("system_baseline", {"system_baseline_integrity_exclude_paths": ["/var/lib/../../etc"]},
     "system_baseline_integrity_exclude_paths", "not a plain absolute path"),
    ("system_baseline", {"system_baseline_integrity_exclude_paths": ["/opt/app data"]}, "system_baseline_integrity_exclude_paths",
     "not a plain absolute path"),
    ("system_baseline", {"system_baseline_integrity_exclude_paths": ["/srv/pacs\n"]}, "system_baseline_integrity_exclude_paths",
     "not a plain absolute path"),
    ("system_baseline", {"system_baseline_integrity_exclude_paths": ["/srv/pacs", "/etc"]}, "system_baseline_integrity_exclude_paths",
     "system folders AIDE is for"),
    ("system_baseline", {"system_baseline_integrity_exclude_paths": ["/etc/ssh"]}, "system_baseline_integrity_exclude_paths",
     "under one of the system folders"),
    ("system_baseline", {"system_baseline_integrity_exclude_paths": ["/var"]}, "system_baseline_integrity_exclude_paths",
     "would leave out /var"),
    ("system_baseline", {"system_baseline_integrity_exclude_paths": "/srv/pacs"}, "system_baseline_integrity_exclude_paths",
     "list"),
    ("system_baseline", {"system_baseline_integrity_accept": True}, "system_baseline_integrity_accept", "alert id"),
    ("system_baseline", {"system_baseline_integrity_accept": "yes"}, "system_baseline_integrity_accept", "alert id"),
    ("system_baseline", {"system_baseline_sudo_logfile": "/tmp/sudo.log"}, "system_baseline_sudo_logfile", "under /var/log"),
    ("system_baseline", {"system_baseline_packages_absent": ["telnet", "openssh-server"]}, "system_baseline_packages_absent",
     "openssh-server cannot be removed"),
    ("system_baseline", {"system_baseline_packages_absent": ["telnet; rm -rf /"]}, "system_baseline_packages_absent",
     "Debian package names"),
    ("system_baseline", {"system_baseline_packages_absent": "telnet"}, "system_baseline_packages_absent", "list"),
    # grep is Essential on every Debian (here, the controller the harness validates on).
    ("system_baseline", {"system_baseline_packages_absent": ["telnet", "grep"]}, "system_baseline_packages_absent",
     "essential, required or important"),
    ("system_baseline", {"system_baseline_services_masked": ["cabinet-backup.timer"]}, "system_baseline_services_masked",
     "cannot be masked"),
    ("system_baseline", {"system_baseline_services_masked": ["ssh.service"]}, "system_baseline_services_masked",
     "ssh.service cannot be masked"),
    ("system_baseline", {"system_baseline_services_masked": ["avahi-daemon"]}, "system_baseline_services_masked",
     "systemd unit names"),
    ("system_baseline", {"system_baseline_inactive_days": 7}, "system_baseline_inactive_days", "30 to 3650"),
    ("system_baseline", {"system_baseline_log_forwarding_enabled": True}, "system_baseline_log_host", "log host"),
    ("system_baseline", {**LOG_ON, "system_baseline_log_host": 'logs" port="1'}, "system_baseline_log_host", "log host"),
    ("system_baseline", {**LOG_ON, "system_baseline_log_ca_cert": "not a certificate"}, "system_baseline_log_ca_cert", "PEM"),
    ("system_baseline", {"system_baseline_log_port": 0}, "system_baseline_log_port", "1 to 65535"),
    ("system_baseline", {**LOG_ON, "system_baseline_log_host": "192.0.2.20"}, "system_baseline_log_peer_name",
     "given by its address"),
    ("system_baseline", {**LOG_ON, "system_baseline_log_peer_name": "*.msp.example"}, "system_baseline_log_peer_name",
     "log host certificate"),
    ("system_baseline", {**LOG_ON, "system_baseline_logging_enabled": False}, "system_baseline_log_forwarding_enabled",
     "logging part"),
    ("system_baseline", {"system_baseline_services_masked": ["postfix@-.service"]}, "system_baseline_services_masked",
     "cannot be masked"),
    ("system_baseline", {"system_baseline_packages_absent": ["linux-image-amd64"]}, "system_baseline_packages_absent",
     "cannot be removed"),
    ("system_baseline", {"system_baseline_inactive_lock": "oui"}, "system_baseline_inactive_lock", "not a valid boolean"),
    ("system_baseline", {"system_baseline_inactive_exempt": ["Dr Martin"]}, "system_baseline_inactive_exempt", "account names"),
    ("system_baseline", {"system_baseline_sudo_logfile": "/var/log/../../etc/shadow"}, "system_baseline_sudo_logfile",
     "under /var/log"),
    ("system_baseline", {"system_baseline_su_group": "wheel users"}, "system_baseline_su_group", "a group name"),
    ("system_baseline", {"system_baseline_firewall_enabled": "oui"}, "system_baseline_firewall_enabled", "not a valid boolean"),
    ("system_baseline", {"system_baseline_ssh_revert_seconds": 5}, "system_baseline_ssh_revert_seconds", "30 to 3600"),
    ("system_baseline", {"system_baseline_ssh_ban_enabled": "oui"}, "system_baseline_ssh_ban_enabled", "not a valid boolean"),
    ("system_baseline", {"system_baseline_ssh_ban_after_failures": 1}, "system_baseline_ssh_ban_after_failures", "2 to 20"),
    ("system_baseline", {"system_baseline_ssh_ban_find_minutes": 0}, "system_baseline_ssh_ban_find_minutes", "1 to 1440"),
    ("system_baseline", {"system_baseline_ssh_ban_minutes": 20000}, "system_baseline_ssh_ban_minutes", "1 to 10080"),
    ("system_baseline", {"system_baseline_ssh_ban_exempt": ["msp.example"]}, "system_baseline_ssh_ban_exempt",
     "not an address or a CIDR network"),
    ("system_baseline", {"system_baseline_ssh_ban_exempt": ["192.0.2.7/24"]}, "system_baseline_ssh_ban_exempt", "host bits set"),
    ("system_baseline", {"system_baseline_ssh_ban_exempt": ["fe80::1%x\nAllowTcpForwarding yes"]}, "system_baseline_ssh_ban_exempt",
     "not an address or a CIDR network"),
    ("system_baseline", {"system_baseline_firewall_ssh_sources": []}, "system_baseline_firewall_ssh_sources", "or [any]"),
    ("system_baseline", {"system_baseline_firewall_ssh_sources": ["192.0.2.7/24"]}, "system_baseline_firewall_ssh_sources",
     "host bits set"),
    ("system_baseline", {"system_baseline_firewall_closed_ports": ["445/smb"]}, "system_baseline_firewall_closed_ports",
     "3493/tcp, 5353/udp or 8080"),
    ("system_baseline", {"system_baseline_firewall_closed_ports": [70000]}, "system_baseline_firewall_closed_ports",
     "3493/tcp, 5353/udp or 8080"),
    ("system_baseline", {"system_baseline_firewall_extra_rules": [{"name": "pacs", "port": 104, "from": "any", "open_on": "a b"}]},
     "system_baseline_firewall_extra_rules", "open_on expected"),
    # A host with 1 GiB of RAM (a fact the harness sets, whatever the controller has).
    ("antivirus", {"antivirus_min_memory_mb": 2048, "harness_facts": {"memtotal_mb": 1024}},
     "antivirus_min_memory_mb", "MB of RAM, below"),
    # hardware_health: thresholds out of order, dates that do not parse, a schedule smartd never runs.
    ("hardware_health", {"hardware_health_space_warning_percent": 95, "hardware_health_space_critical_percent": 90},
     "hardware_health_space_warning_percent", "1 <= warning < critical <= 100"),
    ("hardware_health", {"hardware_health_space_warning_free_gib": 2, "hardware_health_space_critical_free_gib": 10},
     "hardware_health_space_warning_free_gib", "0 < critical <= warning"),
    ("hardware_health", {"hardware_health_inode_critical_percent": 101}, "hardware_health_inode_warning_percent",
     "1 <= warning < critical <= 100"),
    ("hardware_health", {"hardware_health_contract_end": "31/12/2027"}, "hardware_health_contract_end", "YYYY-MM-DD"),
    ("hardware_health", {"hardware_health_warranty_end": "2027-02-30"}, "hardware_health_warranty_end", "not a day of the calendar"),
    ("hardware_health", {"hardware_health_purchase_date": "2099-01-01", "hardware_health_warranty_end": "2100-01-01"},
     "hardware_health_purchase_date", "a day in the past"),
    ("hardware_health", {"hardware_health_warranty_end": "2022-01-01"}, "hardware_health_warranty_end",
     "after hardware_health_purchase_date"),
    ("hardware_health", {"hardware_health_smart_schedule": "S/../.././25"}, "hardware_health_smart_schedule",
     "schedules no self-test"),
    ("hardware_health", {"hardware_health_smart_schedule": "(S/../.././02"}, "hardware_health_smart_schedule",
     "not a valid regular expression"),
    ("hardware_health", {"hardware_health_smart_schedule": "S/../.././02 -M exec /tmp/x"}, "hardware_health_smart_schedule",
     "without spaces"),
    ("hardware_health", {"hardware_health_smart_devices": [{"device": "/dev/sdb; reboot", "type": "sat"}]},
     "hardware_health_smart_devices", "device: /dev/disk/by-id"),
    ("hardware_health", {"hardware_health_smart_devices": [{"device": "/dev/sdb", "type": "sat -M exec /tmp/x"}]},
     "hardware_health_smart_devices", "smartd -d type"),
    ("hardware_health", {"hardware_health_smart_temperature_warning": 60}, "hardware_health_smart_temperature_warning",
     "the warning below the critical"),
    ("hardware_health", {"hardware_health_smart": "yes"}, "hardware_health_smart", "auto, always, never"),
    ("hardware_health", {"hardware_health_key_paths": [{"path": "srv", "label": "x"}]}, "hardware_health_key_paths",
     "path: /absolute/folder"),
    ("hardware_health", {"hardware_health_key_paths": [{"path": "/srv", "label": "données\nFAKE: header"}]},
     "hardware_health_key_paths", "label: one line"),
    ("hardware_health", {"hardware_health_contract_reference": "LAB-1\nX-Injected: 1"}, "hardware_health_contract_provider",
     "one line each"),
    # Found by the hostile read: text the check or smartd would read differently from the validation.
    ("hardware_health", {"hardware_health_smart_schedule": "(S/../.././02|L/../../6/03)\n"}, "hardware_health_smart_schedule",
     "without spaces"),
    ("hardware_health", {"hardware_health_contract_end": "2027-06-30 "}, "hardware_health_contract_end", "without spaces"),
    ("hardware_health", {"hardware_health_smart_devices": [{"device": "/dev/sdb", "type": "sat\n"}]},
     "hardware_health_smart_devices", "smartd -d type"),
    ("hardware_health", {"hardware_health_smart_devices": [{"device": "/dev/sdb\n", "type": "sat"}]},
     "hardware_health_smart_devices", "device: /dev/disk/by-id"),
    ("hardware_health", {"hardware_health_space_critical_free_gib": 0}, "hardware_health_space_warning_free_gib",
     "0 < critical <= warning"),
    ("hardware_health", {"hardware_health_ignore_mounts": ["media"]}, "hardware_health_ignore_mounts", "absolute mount points"),
    ("hardware_health", {"hardware_health_ignore_mounts": ["/media "]}, "hardware_health_ignore_mounts", "absolute mount points"),
    ("hardware_health", {"hardware_health_key_paths": [{"path": "/srv ", "label": "données"}]}, "hardware_health_key_paths",
     "path: /absolute/folder"),
    ("hardware_health", {"hardware_health_notice_days": 3}, "hardware_health_notice_days", "7 to 365"),
    ("hardware_health", {"hardware_health_check_interval_minutes": 0}, "hardware_health_check_interval_minutes", "1 to 1440"),
]


# The machine the harness describes: a supported Debian host, whatever the controller runs.
HARNESS_FACTS = {"distribution": "Debian", "distribution_major_version": "12", "distribution_version": "12.8",
                 "virtualization_type": "kvm", "virtualization_role": "guest"}


def run_role(role: str, variables: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    extra = tmp_path / "vars.json"
    facts = {**HARNESS_FACTS, **variables.get("harness_facts", {})}
    extra.write_text(json.dumps({"role_under_test": role, **variables, "harness_facts": facts}), encoding="utf-8")
    # Skipped tasks shown: a check that passes is a skipped `fail` (docs/conventions.md), and
    # the tests look for the role's own checks among the task headers.
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
                      ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_LIBRARY=str(ROOT / "tests" / "unit" / "library"),
                      ANSIBLE_DISPLAY_SKIPPED_HOSTS="true")
    # cabinet_validate_only: each role runs up to the end of its validation, as the first
    # play of site.yml runs it; no --tags, so a validation task that changed something would
    # show in the recap. Check mode on top: this is the controller.
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--check", "-i", "localhost,",
         str(PLAYBOOK), "-e", f"@{extra}", "-e", "cabinet_validate_only=true",
         "-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def own_validation_checks(role: str) -> list[str]:
    """The names of the role's own "Validate" tasks at the top of its tasks/validate.yml."""
    import yaml

    tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / "validate.yml").read_text(encoding="utf-8"))
    return [t["name"] for t in tasks if " | Validate" in t.get("name", "") and "block" not in t]


def recap_changed(output: str) -> int:
    line = next(l for l in output.splitlines() if l.startswith("localhost") and "changed=" in l)
    return int(line.split("changed=")[1].split()[0])


# The bad and good cases run in BATCHES ansible-playbook runs, not one run each (about 180
# runs, most of `make unit`'s time): each case is a host of its own in the batch's inventory
# (local connection), its variables are that host's inventory variables, as an MSP gives them,
# and the play includes the host's role. A host stops at its own failure; nothing a case does
# reaches another (no run_once, no delegation in any validation). The results are read per host
# from the JSON callback: where the host stopped, its message, its changed count. The batches
# are pytest-xdist groups, so `make unit`'s two workers run one batch each.
BATCHES = 2
BAD = {f"{c[0]}-{c[2]}-{i}": (c[0], {k: v for k, v in {**GOOD[c[0]], **c[1]}.items() if v is not None})
       for i, c in enumerate(CASES)}
GOOD_CASES = {f"good-{role}": (role, GOOD[role]) for role in sorted(GOOD)}
BATCH_OF = {name: i % BATCHES for i, name in enumerate([*BAD, *GOOD_CASES])}


def _batch_mark(name: str) -> pytest.MarkDecorator:
    return pytest.mark.xdist_group(f"role-inputs-{BATCH_OF[name]}")


@dataclass
class CaseResult:
    """What the batch run did for one case (one host)."""

    failed: bool
    last_task: str  # the task the host stopped at (the last it ran)
    result: str  # that task's message for the host (msg, and the argument specs' errors)
    task_names: list[str]  # every task the host ran
    changed: int
    output: str  # the whole run's output (a secret must appear nowhere in it)


_BATCH_RESULTS: dict[int, dict[str, CaseResult]] = {}


def run_batch(cases: dict[str, tuple[str, dict]], tmp_path: Path) -> dict[str, CaseResult]:
    """Run every case in one ansible-playbook run; one host per case."""
    hosts = {}
    for index, (name, (role, variables)) in enumerate(cases.items()):
        facts = {**HARNESS_FACTS, **variables.get("harness_facts", {})}
        hosts[f"case{index}"] = {**variables, "role_under_test": role, "harness_facts": facts,
                                 "ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp_path / "cases.json"
    inventory.write_text(json.dumps({"all": {"hosts": hosts}}), encoding="utf-8")
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_LOCALHOST_WARNING="false",
                      ANSIBLE_LIBRARY=str(ROOT / "tests" / "unit" / "library"), ANSIBLE_FORKS=os.environ.get("ROLE_INPUTS_FORKS", "4"))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--check", "-i", str(inventory),
         str(PLAYBOOK), "-e", "harness_hosts=all", "-e", "cabinet_validate_only=true"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False,
    )
    output = done.stdout + done.stderr
    try:
        report = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"the batch run printed no JSON report (exit {done.returncode}):\n{output[-3000:]}")
    results = {}
    for index, name in enumerate(cases):
        host = f"case{index}"
        ran = [(t["task"]["name"], r) for play in report["plays"] for t in play["tasks"]
               for h, r in t["hosts"].items() if h == host]
        stats = report["stats"].get(host, {})
        assert ran and stats, f"{name}: the batch run has no result for {host}:\n{output[-3000:]}"
        results[name] = CaseResult(failed=stats.get("failures", 0) > 0 or stats.get("unreachable", 0) > 0,
                                   last_task=ran[-1][0], result=_message(ran[-1][1]),
                                   task_names=[n for n, _ in ran], changed=stats.get("changed", 0), output=output)
    return results


def _message(result: dict) -> str:
    """A result's message: not its other fields (the argument specs' result carries every
    variable's description, which would let any words match)."""
    return "\n".join([str(result.get("msg", "")), *map(str, result.get("argument_errors", []))])


def case_result(name: str, tmp_path_factory: pytest.TempPathFactory) -> CaseResult:
    """The result of one case: its batch is run the first time one of its cases asks."""
    batch = BATCH_OF[name]
    if batch not in _BATCH_RESULTS:
        cases = {n: c for n, c in {**BAD, **GOOD_CASES}.items() if BATCH_OF[n] == batch}
        _BATCH_RESULTS[batch] = run_batch(cases, tmp_path_factory.mktemp(f"role-inputs-{batch}"))
    return _BATCH_RESULTS[batch][name]


@pytest.mark.parametrize("name", [pytest.param(n, marks=_batch_mark(n)) for n in BAD])
def test_bad_input_stops_before_any_change(name, tmp_path_factory):
    role, variables = BAD[name]
    case = CASES[int(name.rsplit("-", 1)[1])]
    variable, words = case[2], case[3]
    done = case_result(name, tmp_path_factory)
    assert done.failed, f"the run did not stop: it ran {done.task_names}"
    assert "Validat" in done.last_task or "argument spec" in done.last_task.lower(), \
        f"it stopped at {done.last_task}, not in the validation:\n{done.result[-3000:]}"
    # The message where it stopped names the variable and what was expected.
    assert variable in done.result and words in done.result, done.result[-3000:]
    assert done.changed == 0
    for key, secret in case[1].items():
        if key.endswith(("_password", "_passphrase")) and secret:
            printed = secret in done.output
            assert not printed, f"the secret in {key} was printed"


@pytest.mark.parametrize("role", [pytest.param(r, marks=_batch_mark(f"good-{r}")) for r in sorted(GOOD)])
def test_good_input_passes_validation(role, tmp_path_factory):
    """The same harness with good input passes (so the cases above fail for their reason)."""
    done = case_result(f"good-{role}", tmp_path_factory)
    assert not done.failed, f"stopped at {done.last_task}:\n{done.result[-3000:]}"
    # The role's own checks were reached (a passing check is a skipped `fail`, which the JSON
    # report still lists), not only those of alerting or the preflight.
    own = own_validation_checks(role)
    missing = [n for n in own if not any(t == n or t.endswith(f" : {n}") for t in done.task_names)]
    assert own and missing == [], (missing, done.task_names)
    assert done.changed == 0


def test_low_memory_only_warns_when_asked(tmp_path):
    done = run_role("antivirus", {**GOOD["antivirus"], "antivirus_min_memory_mb": 2048,
                                  "harness_facts": {"memtotal_mb": 1024}, "antivirus_memory_check": "warn"},
                    tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "MB of RAM, below antivirus_min_memory_mb" in output, output[-3000:]
    assert recap_changed(output) == 0


@pytest.mark.parametrize("mode", [UPS_NETSERVER, UPS_NETCLIENT], ids=["netserver", "netclient"])
def test_good_ups_modes_pass_validation(mode, tmp_path):
    done = run_role("ups_monitoring", {**GOOD["ups_monitoring"], **mode}, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    headers = [l for l in output.splitlines() if l.startswith("TASK [")]
    missing = [n for n in own_validation_checks("ups_monitoring") if not any(f" : {n}]" in h for h in headers)]
    assert missing == [], f"the role's own checks were not reached: {missing}\n{output[-3000:]}"
    assert recap_changed(output) == 0


def test_a_host_that_forwards_packets_stops_the_baseline_until_decided(tmp_path):
    """net.ipv4.ip_forward = 0 would cut a VPN endpoint or containers off: the inventory decides."""
    if not controller_forwards():
        pytest.skip("the controller does not forward packets (no podman network): nothing to stand for such a host")
    done = run_role("system_baseline", {**GOOD["system_baseline"], "system_baseline_kernel_allow_forwarding": False}, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "forwards packets now" in output and "system_baseline_kernel_allow_forwarding" in output, output[-3000:]
    assert recap_changed(output) == 0


@pytest.mark.parametrize("role", sorted(GOOD))
def test_validation_comes_first(role):
    """Argument specs run before the role's tasks; the first task file must be the validation."""
    import yaml

    tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / "main.yml").read_text(encoding="utf-8"))
    if role == "alerting":
        # Alerting's one exception: a later play of the same run stops before validating again
        # what this run validated and applied (test_alerting_is_applied_once_a_run_not_once_a_play).
        # It may only look at this run's token and its own mark, which validate.yml draws.
        guard = tasks.pop(0)
        assert guard.get("ansible.builtin.meta") == "end_role", guard
        assert guard.get("when") == ["cabinet_run_token | default('') | length > 0",
                                     "__cabinet_alerting_applied | default('') == cabinet_run_token"], guard
    first = tasks[0]
    assert first.get("ansible.builtin.import_tasks") == "validate.yml", first
    assert "always" in first.get("tags", []), "validation must run whatever tags were asked for"
    # playbooks/validate.yml runs each role up to here only, before any play changes a host.
    second = tasks[1]
    assert second.get("ansible.builtin.meta") == "end_role", second
    assert second.get("when") == "cabinet_validate_only | default(false) | bool", second
    assert "always" in second.get("tags", []), second
    assert (ROOT / "roles" / role / "meta" / "argument_specs.yml").is_file()


def test_unsupported_platform_stops_before_any_change(tmp_path):
    """The controller is Debian 12: declare only Debian 11 supported and the run must stop."""
    done = run_role("alerting", {**GOOD["alerting"], "cabinet_preflight_supported_platforms": {"Debian": ["11"]}},
                    tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "Stop on an unsupported platform" in [l for l in output.splitlines() if l.startswith("TASK [")][-1]
    assert "cabinet-hardening supports Debian 11 only" in output, output[-3000:]
    assert recap_changed(output) == 0


# ----------------------------------------------------------------------------- site.yml
PLAYBOOKS = ROOT / "playbooks"


def test_validation_table_matches_the_practice_playbooks():
    """playbooks/validate.yml's table of where each role applies says what the playbooks say."""
    import yaml

    validate = yaml.safe_load((PLAYBOOKS / "validate.yml").read_text(encoding="utf-8"))
    # First, every host of the run is reached, so that one switched off is left out rather than
    # failing the validation's any_errors_fatal (test_a_host_that_is_off_leaves_the_others_enforced).
    reach, check = validate[0], validate[1]
    assert [t.get("ansible.builtin.ping", "not a ping") for t in reach["tasks"]] == [None]
    assert reach["hosts"] == check["hosts"] and not reach.get("any_errors_fatal")
    assert check["any_errors_fatal"] is True
    table = check["vars"]["__cabinet_role_groups"]
    for role, groups in table.items():
        entry = yaml.safe_load((PLAYBOOKS / f"{role}.yml").read_text(encoding="utf-8"))
        # seal.yml, last, records the run's end for the integrity check (it changes no setting).
        assert [p.get("ansible.builtin.import_playbook") for p in entry] == ["validate.yml", f"practices/{role}.yml", "seal.yml"], \
            f"{role}.yml must validate, then apply the practice's plays, then seal"
        assert entry[0]["vars"]["cabinet_run_roles"] == [role]
        plays = yaml.safe_load((PLAYBOOKS / "practices" / f"{role}.yml").read_text(encoding="utf-8"))
        patterns = set()
        for play in plays:
            patterns.update(play["hosts"].split(":"))
            # A play variable outranks the inventory, which must not be able to skip the roles.
            assert play["vars"]["cabinet_validate_only"] is False, play["name"]
        assert patterns == set(groups), f"{role}.yml applies to {sorted(patterns)}, validate.yml says {groups}"
    site = yaml.safe_load((PLAYBOOKS / "site.yml").read_text(encoding="utf-8"))
    assert site[0].get("ansible.builtin.import_playbook") == "validate.yml"
    assert sorted(site[0]["vars"]["cabinet_run_roles"]) == sorted(table)
    # After the one validation, the practices' plays only: no second, skippable validation.
    assert [p["ansible.builtin.import_playbook"] for p in site[1:]] == [f"practices/{r}.yml" for r in site[0]["vars"]["cabinet_run_roles"]] + ["seal.yml"]


def _site_check_run(tmp_path: Path, variables: dict, inventory_vars: dict | None = None,
                    playbook: str = "site.yml", groups: dict | None = None,
                    limit: str | None = None, extra_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"vars": inventory_vars or {}, "children": groups or {
        "cabinet_managed": {"hosts": {"localhost": {}}},
        "backup_clients": {"hosts": {"localhost": {}}},
    }}}), encoding="utf-8")
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(variables), encoding="utf-8")
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOCALHOST_WARNING="false")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--check", "-i", str(inventory),
         str(PLAYBOOKS / playbook), "-e", f"@{extra}", "-e", "ansible_connection=local",
         "-e", f"ansible_python_interpreter={sys.executable}", *(["--limit", limit] if limit else []), *extra_args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize("playbook", ["site.yml", "backup.yml"])
@pytest.mark.parametrize("inventory_vars", [
    {},
    # A bad or hostile inventory must not be able to skip the validation or the roles.
    {"cabinet_validated_roles": ["alerting", "password_policy", "auto_updates", "antivirus", "ups_monitoring", "backup"],
     "cabinet_validate_only": False, "cabinet_run_roles": []},
], ids=["plain", "inventory-tries-to-skip"])
def test_bad_backup_input_stops_a_whole_run_before_any_change(tmp_path, playbook, inventory_vars):
    """A bad backup variable stops site.yml (or backup.yml) in its first play, before alerting
    (the first practice, and backup's dependency) or any other play changes anything.

    Run in check mode against the controller, without --tags: had the validation not come
    first, alerting's play would report the packages and files it would change (changed > 0)
    before backup's own validation stopped the run.
    """
    variables = {**GOOD["alerting"], **GOOD["system_baseline"], **GOOD["auto_updates"], **GOOD["antivirus"], **GOOD["backup"],
                 "backup_retention_daily": 0}
    done = _site_check_run(tmp_path, variables, inventory_vars, playbook)
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"the run did not stop:\n{output[-3000:]}"
    assert "backup_retention_daily" in output, output[-3000:]
    plays = [line for line in output.splitlines() if line.startswith("PLAY [")]
    assert plays and all(p.startswith("PLAY [Validate") for p in plays), \
        f"plays ran after the validation: {plays}\n{output[-3000:]}"
    assert recap_changed(output) == 0, output[-3000:]


def test_an_inventory_cannot_turn_a_run_into_validation_only(tmp_path):
    """cabinet_validate_only from the inventory must not make site.yml apply nothing."""
    variables = {**GOOD["alerting"], **GOOD["auto_updates"], **GOOD["antivirus"], **GOOD["backup"]}
    done = _site_check_run(tmp_path, variables, {"cabinet_validate_only": True}, "alerting.yml")
    output = done.stdout + done.stderr
    tasks = [line for line in output.splitlines() if line.startswith("TASK [")]
    # Alerting's last task (an install task is skipped where the controller has the packages).
    assert any("Alerting | Mark the role applied" in t for t in tasks), \
        f"the alerting play stopped after its validation:\n{output[-3000:]}"


def test_limit_to_a_practice_host_still_validates_the_off_site_settings_it_writes_with(tmp_path):
    """With --limit <practice host>, the off-site server is not in the run, but the practice
    host writes its key there with the server's backup_server_user: root must be refused."""
    variables = {**GOOD["backup"], "backup_offsite_enabled": True, "backup_offsite_server": "offsite1"}
    groups = {"cabinet_managed": {"hosts": {"localhost": {}}},
              "backup_clients": {"hosts": {"localhost": {}}},
              "backup_offsite": {"hosts": {"offsite1": {"backup_server_user": "root", "ansible_host": "127.0.0.1"}}}}
    done = _site_check_run(tmp_path, variables, {}, "backup.yml", groups=groups, limit="localhost")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "backup_server_user (on offsite1)" in output, output[-3000:]
    assert recap_changed(output) == 0, output[-3000:]


def test_boolean_switches_are_read_through_the_bool_filter():
    """`-e password_policy_faillock_enabled=false` passes the string "false": the argument specs
    accept it as a bool, but a bare `when: x`, `'a' if x else 'b'` or `{% if x %}` takes any
    non-empty string for true (the anti-lockout fault test once turned faillock *on* that way).
    Every use of a variable declared `type: bool` goes through `| bool`."""
    import re

    import yaml
    switches = set()
    for spec_file in ROOT.glob("roles/*/meta/argument_specs.yml"):
        for entry in yaml.safe_load(spec_file.read_text())["argument_specs"].values():
            switches |= {name for name, option in entry.get("options", {}).items() if option.get("type") == "bool"}
    assert len(switches) > 20, "the argument specs declare the roles' switches as type: bool"
    bare = re.compile(r"\b(" + "|".join(sorted(switches)) + r")\b(?!\s*\|\s*bool)")
    found = []
    for path in sorted(ROOT.glob("roles/*/*/**/*")):
        if not path.is_file() or path.parts[len(ROOT.parts) + 2] not in ("tasks", "handlers", "templates", "vars"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            code = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
            # A switch named inside a message is text, not a test.
            # The switch check itself hands each value, as given, to switch_problems.
            if re.fullmatch(r"\s*'(\w+)': \1,?", line):
                continue
            code = re.sub(r"'[^'{}]*('|$)", "''", code)
            if bare.search(code):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == [], "switches read without | bool:\n" + "\n".join(found)


def test_problem_lists_are_templated_once_when_they_pass():
    """A check that gathers its problems in a list stops with `fail` when the list is not
    empty. `assert` templates its `fail_msg` even when it passes, so the list was computed
    twice on every run (session 17's profile: a quarter of the workers' CPU in a re-run)."""
    import re

    import yaml

    files = [path for pattern in ("roles/*/tasks/*.yml", "roles/*/handlers/*.yml", "playbooks/**/*.yml",
                                  "molecule/resources/**/*.yml", "molecule/*/*.yml", "tests/**/*.yml")
             for path in ROOT.glob(pattern)]
    found, stops = [], 0
    for path in sorted(set(files)):
        for task in playbook_tasks(yaml.safe_load(path.read_text(encoding="utf-8"))):
            check = task.get("ansible.builtin.assert", task.get("assert"))
            if isinstance(check, dict):
                that = check.get("that", [])
                for condition in that if isinstance(that, list) else [that]:
                    if re.search(r"\|\s*length\s*==\s*0\s*$", str(condition)):
                        found.append(f"{path.relative_to(ROOT)}: {task.get('name', '(unnamed)')}: {condition}")
            when = task.get("when", [])
            if "ansible.builtin.fail" in task and re.search(r"\|\s*length\s*>\s*0\s*$",
                                                             str(when[-1] if isinstance(when, list) and when else when)):
                stops += 1
    assert found == [], "problem lists checked with assert (use fail with when: <list> | length > 0):\n" + "\n".join(found)
    assert stops >= 30, f"the validations' stops are fail tasks with when: <list> | length > 0 (found {stops})"


def test_every_role_checks_each_of_its_switches_is_true_or_false():
    """The switch check of each role's validation names exactly the role's bool variables."""
    import re

    import yaml
    for spec_file in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        role = spec_file.parts[-3]
        options = yaml.safe_load(spec_file.read_text())["argument_specs"]["main"].get("options", {})
        switches = {name for name, option in options.items() if option.get("type") == "bool"}
        if not switches:
            continue
        checked = set(re.findall(r"^\s*'(\w+)': \1,?$", (ROOT / "roles" / role / "tasks" / "validate.yml").read_text(), re.M))
        assert checked == switches, f"{role}: the switch check misses {switches - checked} or names {checked - switches}"


def test_a_host_that_is_off_leaves_the_others_enforced(tmp_path):
    """A workstation switched off at night must not stop its practice's run.

    The validation play has any_errors_fatal, and Ansible's linear strategy treats an
    unreachable host there like a failed one: before playbooks/validate.yml reached every host
    first, one machine that was off marked every other host failed and nothing was applied."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"children": {"cabinet_managed": {"hosts": {
        "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        # Nothing listens on the discard port: the connection is refused at once.
        "switched-off": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 9,
                         "ansible_user": "nobody"},
    }}}}}), encoding="utf-8")
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(GOOD["alerting"]), encoding="utf-8")
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOCALHOST_WARNING="false",
                      ANSIBLE_HOST_KEY_CHECKING="false", ANSIBLE_TIMEOUT="5")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--check", "-i", str(inventory),
         str(PLAYBOOKS / "alerting.yml"), "-e", f"@{extra}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    recap = {line.split()[0]: line for line in output.split("PLAY RECAP", 1)[-1].splitlines() if " : ok=" in line}
    assert "unreachable=1" in recap.get("switched-off", ""), output[-3000:]
    assert "failed=0" in recap.get("localhost", ""), output[-3000:]
    tasks_run = output.split("PLAY [Alerting", 1)
    assert len(tasks_run) == 2 and "Alerting | Mark the role applied" in tasks_run[1], \
        f"the practice's play was not applied:\n{output[-3000:]}"
    assert done.returncode == 4, f"exit {done.returncode}: ansible-playbook's code for an unreachable host\n{output[-2000:]}"


@pytest.mark.parametrize("inventory_vars", [
    {},
    # The mark and the token from the inventory: validate.yml's own token outranks it.
    {"cabinet_run_token": "x", "__cabinet_alerting_applied": "x"},
    # The mark templated to whatever token the run draws: validate.yml empties the mark too.
    {"__cabinet_alerting_applied": "{{ cabinet_run_token }}"},
], ids=["plain", "inventory-forges-the-mark", "inventory-templates-the-mark"])
def test_alerting_is_applied_once_a_run_not_once_a_play(tmp_path, inventory_vars):
    """Every practice's role depends on alerting, and site.yml is one play a practice: alerting's
    tasks ran in each play (six times a host, a third of a re-run's tasks). They now run in the
    first play that applies alerting and stop at once in the later ones. --tags alerting keeps
    the run to alerting's tasks (and the validation), in every play."""
    variables = {**GOOD["alerting"], **GOOD["system_baseline"], **GOOD["auto_updates"], **GOOD["antivirus"]}
    done = _site_check_run(tmp_path, variables, inventory_vars, "site.yml", groups={"cabinet_managed": {"hosts": {"localhost": {}}}},
                           extra_args=("--tags", "alerting"))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    plays = [p for p in output.split("\nPLAY [")[1:]]
    # Alerting's last task marks the role applied: it shows in the play that applied it, whether
    # or not the controller has the packages (an install task is skipped when it does).
    applying = [p.split("]", 1)[0] for p in plays if "TASK [alerting : Alerting | Mark the role applied" in p]
    assert applying == ["Alerting | Relay alerts and system mail to the MSP"], applying
    # The later plays did include alerting (its argument specs show), then stopped before its
    # validation and tasks: the relay password is vetted once a run, not once a play.
    included = [p.split(" |", 1)[0] for p in plays if "TASK [alerting : Validating arguments against arg spec" in p]
    assert included == ["Validate", "Alerting", "System baseline", "Password policy", "Auto updates", "Antivirus", "Hardware health"], \
        f"plays that included alerting: {included}\n{output[-3000:]}"
    validated = [p.split(" |", 1)[0] for p in plays if "TASK [alerting : Alerting | Validate" in p]
    assert validated == ["Validate", "Alerting"], f"plays that validated alerting: {validated}\n{output[-3000:]}"
