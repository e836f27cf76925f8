"""The settings of Team Golf-4 (the config's [golf4] section): the operator dashboard, its
HTTP API and the `hvsuite` command on the primary host."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from settings.base import TeamSettings

_ABSOLUTE_PATH = r"^/[A-Za-z0-9_.@+-]+(/[A-Za-z0-9_.@+-]+)*$"
_UNIT_NAME = r"^[a-z][a-z0-9-]{0,60}$"
_PACKAGE = r"^[a-z0-9][a-z0-9+.-]*$"


class Golf4Settings(TeamSettings):
    """Team Golf-4: the dashboard service (a web page, an HTTP API with its OpenAPI document)
    and the operator's `hvsuite` command, showing what the controller recorded."""

    section: ClassVar[str] = "golf4"

    # Debian's web framework, its ASGI server and its template engine (bookworm: FastAPI
    # 0.92, uvicorn 0.17, Jinja2 3.1); FastAPI generates the OpenAPI document.
    packages: list[str] = ["python3-fastapi", "python3-uvicorn", "python3-jinja2"]
    # The [[ports]] rule of team Golf-4 the service listens on (admin-only).
    port_name: str = Field("hvsuite-dashboard", pattern=r"^[a-z][a-z0-9_-]*$")
    # Where it listens on the host: every IPv4 address (the firewall keeps the port to the
    # rule's sources); the `hvsuite` command reaches it on loopback.
    listen_address: str = "0.0.0.0"
    # The systemd service, and the system user it runs as (created when missing).
    unit: str = Field("hvsuite-dashboard", pattern=_UNIT_NAME)
    user: str = Field("hvsuite-dashboard", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    # The application's code (a Python package copied from steps/golf4/app/).
    app_dir: str = Field("/opt/hvsuite/dashboard", pattern=_ABSOLUTE_PATH)
    # The service's settings (JSON, written from this section) and the published reports.
    config_file: str = Field("/etc/hvsuite/dashboard.json", pattern=_ABSOLUTE_PATH)
    data_dir: str = Field("/var/lib/hvsuite/reports", pattern=_ABSOLUTE_PATH)
    # The operator's command.
    cli_path: str = Field("/usr/local/bin/hvsuite", pattern=_ABSOLUTE_PATH)
    # How many of the latest completion signals are published (signals.jsonl grows with every run).
    signals_kept: int = Field(500, ge=20, le=100_000)
    # Seconds the service waits for Prometheus per query before it shows it unreachable.
    prometheus_timeout: float = Field(3.0, gt=0, le=30)

    @field_validator("packages")
    @classmethod
    def _packages(cls, names: list[str]) -> list[str]:
        bad = [name for name in names if not re.fullmatch(_PACKAGE, name)]
        if bad:
            raise ValueError(
                f"golf4.packages: {', '.join(map(repr, bad))} are not Debian package names "
                '(write them like "python3-fastapi")'
            )
        return names

    @field_validator("listen_address")
    @classmethod
    def _address(cls, value: str, info: ValidationInfo) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                f"golf4.{info.field_name} {value!r} is not an IP address "
                '(write "0.0.0.0" for every IPv4 address, or one of the host\'s addresses)'
            ) from None
        return value

    @model_validator(mode="after")
    def _separate_paths(self) -> Golf4Settings:
        inside = [
            name
            for name in ("config_file", "data_dir", "cli_path")
            if (getattr(self, name) + "/").startswith(self.app_dir.rstrip("/") + "/")
        ]
        if inside:
            raise ValueError(
                f"golf4: {', '.join(inside)} lie inside golf4.app_dir ({self.app_dir}), which holds the "
                "application's code only; move them out (e.g. /etc/hvsuite, /var/lib/hvsuite)"
            )
        return self

    def problems_with(self, config: Any) -> list[str]:
        # Dashboards are admin-only: a rule that lets the world in is refused here, before
        # the firewall would open it.
        for rule in config.ports_of("Golf-4"):
            if rule.name == self.port_name and "world" in rule.sources:
                return [
                    f'ports: the rule "{rule.name}" (golf4.port_name) is open to "world"; the dashboard '
                    'and its API are for operators only: set sources = ["admin"]'
                ]
        return []
