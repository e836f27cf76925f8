"""The settings of Team Charlie-2 (the config's [charlie2] section): Alertmanager and its routes,
the alert rules Charlie's Prometheus evaluates, the metrics the rules read, the alert drill's
bounds, and the central journal on the logs host."""

from __future__ import annotations

import re
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from settings.base import Strict, TeamSettings

# A Prometheus / Alertmanager duration ("30s", "5m", "1h30m", "0s").
DURATION = r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"
_UNIT = r"^[A-Za-z0-9@_.:-]+\.(service|socket|timer)$"
_ALERT = re.compile(r"[A-Z][A-Za-z0-9]*")
SEVERITIES = ("critical", "warning")


def _webhook(value: str, field: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{field}: {value!r} is not an http(s) URL (write it like https://alerts.example.net/hook)"
        )
    return value


class Receiver(Strict):
    """An operator's receiver: alerts of the given severities go to its webhooks."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")
    webhooks: list[str] = Field(min_length=1)
    severities: list[str] = list(SEVERITIES)

    @field_validator("webhooks")
    @classmethod
    def _urls(cls, values: list[str]) -> list[str]:
        return [_webhook(value, "charlie2.alertmanager.receivers[].webhooks") for value in values]

    @field_validator("severities")
    @classmethod
    def _severities(cls, values: list[str]) -> list[str]:
        unknown = [value for value in values if value not in SEVERITIES]
        if unknown or not values:
            raise ValueError(
                f"charlie2.alertmanager.receivers[].severities {values!r}: name one or more of "
                f"{', '.join(SEVERITIES)}"
            )
        return values


class AlertmanagerSettings(Strict):
    """Alertmanager (Debian's package) on the primary, beside Prometheus."""

    package: str = "prometheus-alertmanager"
    # The [[ports]] rule (team Charlie-2) Alertmanager's API and UI listen on.
    port: str = "alertmanager"
    # Alertmanager's grouping: how long a new group waits for more alerts, how often a group
    # that changed is sent again, and how often an unchanged firing group is repeated.
    group_wait: str = Field("30s", pattern=DURATION)
    group_interval: str = Field("5m", pattern=DURATION)
    repeat_interval: str = Field("4h", pattern=DURATION)
    resolve_timeout: str = Field("5m", pattern=DURATION)
    group_by: list[str] = ["alertname", "instance"]
    # The operator's receivers (none by default: the controller's receiver below still gets
    # every alert while a run listens for it).
    receivers: list[Receiver] = []
    # A receiver on the controller for the alert drill: Alertmanager on the host posts to the
    # address the host sees the controller's SSH connection come from, on this port and path.
    controller_receiver: bool = True
    controller_port: int = Field(9781, ge=1024, le=65535)
    controller_path: str = Field("/hvsuite-charlie2/alerts", pattern=r"^/[A-Za-z0-9/_-]*$")

    @field_validator("receivers")
    @classmethod
    def _unique(cls, receivers: list[Receiver]) -> list[Receiver]:
        names = [receiver.name for receiver in receivers]
        doubled = sorted({name for name in names if names.count(name) > 1})
        reserved = sorted({name for name in names if name in ("hvsuite-controller", "blackhole")})
        if doubled or reserved:
            raise ValueError(
                f"charlie2.alertmanager.receivers: {', '.join(doubled + reserved)} named twice or reserved "
                "(hvsuite-controller, blackhole): give each receiver its own name"
            )
        return receivers


class RuleSettings(Strict):
    """The alert rules (steps/charlie2/rules/) and the metrics they read."""

    # `for:` per alert, overriding the rule file's (a short one makes the drill quick).
    alert_for: dict[str, str] = {}
    # Units whose state the rules watch (containerd, flintlock), exported where they exist.
    units: list[str] = Field(["containerd.service", "flintlockd.service"], min_length=1)
    # Certificates whose expiry is exported, besides Alpha's (alpha.tls.cert_dir) and this
    # team's journal certificates: shell globs on the primary.
    certificates: list[str] = ["/etc/kubernetes/pki/*.crt", "/etc/kubernetes/pki/etcd/*.crt"]
    # How often the textfile exporter runs (systemd OnUnitActiveSec).
    textfile_interval: str = Field("1min", pattern=r"^[1-9][0-9]*(s|min|h)$")
    # Added to the longest gap between two scheduled backups (and their randomized delay)
    # before a backup counts as too old.
    backup_grace_seconds: int = Field(3600, ge=0)
    # The virtual IP is scraped through Foxtrot's API port this often.
    vip_scrape_interval: str = Field("30s", pattern=DURATION)

    @field_validator("alert_for")
    @classmethod
    def _durations(cls, values: dict[str, str]) -> dict[str, str]:
        bad = [
            f"{name}={value!r}"
            for name, value in values.items()
            if not _ALERT.fullmatch(name) or not re.fullmatch(DURATION, value)
        ]
        if bad:
            raise ValueError(
                f"charlie2.rules.alert_for: {', '.join(bad)}: write alert names as in the rule files and "
                'durations like "30s" or "5m" (e.g. alert_for = { HostDown = "15s" })'
            )
        return values

    @field_validator("units")
    @classmethod
    def _units(cls, values: list[str]) -> list[str]:
        bad = [value for value in values if not re.fullmatch(_UNIT, value)]
        if bad:
            raise ValueError(
                f"charlie2.rules.units: {', '.join(map(repr, bad))} are not unit names "
                "(write containerd.service)"
            )
        return values

    @field_validator("certificates")
    @classmethod
    def _globs(cls, values: list[str]) -> list[str]:
        bad = [value for value in values if not re.fullmatch(r"/[A-Za-z0-9_./*?-]+", value)]
        if bad:
            raise ValueError(
                f"charlie2.rules.certificates: {', '.join(map(repr, bad))} are not absolute paths or globs "
                "(write /etc/kubernetes/pki/*.crt)"
            )
        return values


class DrillSettings(Strict):
    """The alert drill: node_exporter stopped, the alert and its resolution at the controller."""

    # The longest the alert may take to reach the controller's receiver after node_exporter
    # stopped (scrape interval + rule evaluation + `for:` + Alertmanager's group_wait), and
    # the resolved notification after it started again (+ group_interval).
    firing_seconds: float = Field(300.0, gt=0, le=1800)
    resolved_seconds: float = Field(600.0, gt=0, le=1800)


class JournalSettings(Strict):
    """systemd-journal-remote on the logs host; systemd-journal-upload on every host."""

    package: str = "systemd-journal-remote"
    # The [[ports]] rule (team Charlie-2) journal-remote listens on.
    port: str = "journal-remote"
    # Where each host keeps its journal certificates (its keys never leave it).
    cert_dir: str = Field("/etc/hvsuite-charlie2", pattern=r"^/[A-Za-z0-9_./-]+$")
    # The log check's identifier (SYSLOG_IDENTIFIER) and how long it waits for every host.
    identifier: str = Field("hvsuite-charlie2", pattern=r"^[a-z][a-z0-9-]{0,40}$")
    check_timeout: float = Field(90.0, gt=0, le=900)


class Charlie2Settings(TeamSettings):
    """Team Charlie-2: Alertmanager, alert rules in Charlie's Prometheus, central journal."""

    section: ClassVar[str] = "charlie2"

    alertmanager: AlertmanagerSettings = AlertmanagerSettings()
    rules: RuleSettings = RuleSettings()
    drill: DrillSettings = DrillSettings()
    journal: JournalSettings = JournalSettings()
