"""Fixtures shared by the suite's own tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tests.support.ssh_server import ExecServer


@pytest.fixture
def ssh_server() -> Iterator[ExecServer]:
    """An SSH server on 127.0.0.1 (see tests/support/ssh_server.py), closed afterwards."""
    server = ExecServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A throwaway client key (the test server accepts any key)."""
    path = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(path))
    return path
