"""Targets: the hosts the suite applies to and verifies. Local scratch servers the suite
creates (rootful podman, systemd, Debian 12) or existing servers over SSH, each holding one
or more roles of the inventory (``primary``, ``probe``, ``control-plane``, ...)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from transport.hostkeys import KnownHosts
from transport.ssh import Endpoint


class TargetError(Exception):
    """A target cannot be parsed, created or reached; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """A resolved host: everything needed to reach it, and the roles it holds."""

    # The host's name in logs, Allure steps and lock files: the scratch server's container
    # name, or the inventory name of an ssh host.
    name: str
    address: str
    port: int
    user: str
    key_file: Path
    roles: tuple[str, ...]
    kind: Literal["scratch", "ssh"]
    # known_hosts files every connection checks the host key against.
    known_hosts: tuple[str, ...] = ()
    # Where an unknown host's key is recorded (accept-new), if anywhere.
    record_to: str | None = None
    trust_fix: str | None = None
    # Facts read when it was resolved (for the report's environment).
    os: str = ""
    kernel: str = ""

    @property
    def endpoint(self) -> Endpoint:
        trust = KnownHosts.of(
            self.known_hosts, record_to=Path(self.record_to) if self.record_to else None, fix=self.trust_fix
        )
        return Endpoint(self.name, self.address, self.port, self.user, self.key_file, trust)

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def is_scratch(self) -> bool:
        return self.kind == "scratch"

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["key_file"] = str(self.key_file)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Target:
        values = dict(data)
        values["key_file"] = Path(str(values["key_file"]))
        values["roles"] = tuple(values.get("roles") or ())  # type: ignore[arg-type]
        values["known_hosts"] = tuple(values.get("known_hosts") or ())  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Target:
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        return f"{self.name} ({self.url})"


__all__ = ["Target", "TargetError"]
