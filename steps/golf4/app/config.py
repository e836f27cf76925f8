"""The service's settings: a JSON file the suite writes from the config's [golf4] section."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class DashboardConfig:
    listen_address: str
    port: int
    # Where the controller publishes its reports (reports.json).
    data_dir: str
    prometheus_url: str
    prometheus_timeout: float
    flintlock_state_dir: str
    flintlock_unit: str

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config") -> DashboardConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: not a JSON object")
        names = {field.name for field in fields(cls)}
        problems = [f"{source}: unknown key {key!r}" for key in sorted(set(raw) - names)]
        problems += [f"{source}: missing key {key!r}" for key in sorted(names - set(raw))]
        if problems:
            raise ConfigError("; ".join(problems))
        config = cls(**raw)
        config.check(source)
        return config

    def check(self, source: str) -> None:
        problems = []
        try:
            ipaddress.ip_address(self.listen_address)
        except ValueError:
            problems.append(f"listen_address {self.listen_address!r} is not an IP address")
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            problems.append(f"port {self.port!r} is not a TCP port")
        for key in ("data_dir", "flintlock_state_dir"):
            if not str(getattr(self, key)).startswith("/"):
                problems.append(f"{key} {getattr(self, key)!r} is not an absolute path")
        if not str(self.prometheus_url).startswith(("http://", "https://")):
            problems.append(f"prometheus_url {self.prometheus_url!r} is not an http(s) URL")
        if not isinstance(self.prometheus_timeout, int | float) or self.prometheus_timeout <= 0:
            problems.append(f"prometheus_timeout {self.prometheus_timeout!r} is not a positive number")
        if problems:
            raise ConfigError(f"{source}: " + "; ".join(problems))

    @classmethod
    def load(cls, path: str | Path) -> DashboardConfig:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return cls.from_dict(raw, str(path))
