"""A thin, typed wrapper around the podman CLI (rootful). Every call is bounded in time and
fails with the command and podman's own message, never silently."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

# Label every object the suite creates carries; `destroy-all` removes only what has it.
SUITE_LABEL = "io.hvsuite.owner"
SUITE_LABEL_VALUE = "hvsuite"
RECIPE_LABEL = "io.hvsuite.recipe"
ROLE_LABEL = "io.hvsuite.role"


class PodmanError(RuntimeError):
    """A podman command failed; the message holds the command and podman's stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"`{shlex.join(self.args_)}` exited {returncode}: {self.stderr or '(no output)'}")


def podman_binary() -> str:
    path = shutil.which("podman")
    if path is None:
        raise PodmanError(
            ["podman"], 127, "podman is not installed; run scripts/install-host-deps (as root) first"
        )
    return path


def podman(
    *args: str, timeout: float = 120.0, check: bool = True, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS`; raise PodmanError on a non-zero exit when `check`."""
    argv = [podman_binary(), *args]
    try:
        proc = subprocess.run(
            argv,
            input=stdin.decode("latin-1") if stdin is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PodmanError(argv, -1, f"timed out after {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        raise PodmanError(argv, proc.returncode, proc.stderr)
    return proc


def podman_bytes(*args: str, stdin: bytes, timeout: float = 120.0) -> None:
    """Run podman with binary stdin (for example a tar stream for `podman cp -`)."""
    argv = [podman_binary(), *args]
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PodmanError(argv, -1, f"timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise PodmanError(argv, proc.returncode, proc.stderr.decode(errors="replace"))


def inspect(kind: str, name: str) -> dict[str, Any] | None:
    """`podman <kind> inspect NAME` as a dict, or None when it does not exist."""
    proc = podman(kind, "inspect", name, check=False, timeout=30)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else None


def exists(kind: str, name: str) -> bool:
    return podman(kind, "exists", name, check=False, timeout=30).returncode == 0


def labelled(kind: str, *, role: str | None = None) -> list[dict[str, Any]]:
    """Objects of `kind` (container, volume, network) carrying the suite's label."""
    filters = ["--filter", f"label={SUITE_LABEL}={SUITE_LABEL_VALUE}"]
    if role:
        filters += ["--filter", f"label={ROLE_LABEL}={role}"]
    if kind == "container":
        proc = podman("ps", "-a", *filters, "--format", "json", timeout=30)
    else:
        proc = podman(kind, "ls", *filters, "--format", "json", timeout=30)
    return json.loads(proc.stdout or "[]") or []
