"""The production example (settings/hetzner.example.toml) with its placeholders filled, for
tests that load it: checksums of zeros, and a well-formed Storage Box host key of zeros."""

from __future__ import annotations

import re
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "settings" / "hetzner.example.toml"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def filled_text(text: str | None = None) -> str:
    text = EXAMPLE.read_text() if text is None else text
    text = re.sub(r'"FILL-IN-HOST-KEY[^"]*"', f'"{HOST_KEY}"', text)
    return re.sub(r'"FILL-IN-[^"]*"', '"' + "0" * 64 + '"', text)


def filled_example(directory: Path) -> Path:
    path = directory / "hetzner.toml"
    path.write_text(filled_text())
    return path
