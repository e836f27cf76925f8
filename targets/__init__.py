"""Targets: where the suite applies and verifies. A local scratch server the suite creates
(rootful podman, systemd, Debian 12) or an existing server over SSH."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class TargetError(Exception):
    """A target cannot be parsed, created or reached; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """A resolved target: everything needed to open an SSH connection to it."""

    name: str
    address: str
    port: int
    user: str
    key_file: Path
    profile: str
    is_scratch: bool
    # Facts read from the target when it was resolved (for the report's environment).
    os: str = ""
    kernel: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # known_hosts files every connection checks the host key against (scratch: the suite's own).
    known_hosts: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"ssh://{self.user}@{host}:{self.port}"

    @property
    def testinfra_spec(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"paramiko://{self.user}@{host}:{self.port}"

    def to_json(self) -> str:
        data = asdict(self)
        data["key_file"] = str(self.key_file)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Target:
        data = json.loads(text)
        data["key_file"] = Path(data["key_file"])
        data["known_hosts"] = tuple(data.get("known_hosts", ()))
        return cls(**data)

    def __str__(self) -> str:
        return f"{self.name} ({self.url})"


__all__ = ["Target", "TargetError"]
