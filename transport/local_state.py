"""The suite's local state: `.cache/hvsuite/` at the repository root (or $HVSUITE_CACHE_DIR).
It holds the scratch servers' SSH key pair, build locks and the image recipe's rootfs."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from filelock import FileLock

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY_NAME = "scratch_ed25519"


def cache_dir() -> Path:
    path = Path(os.environ.get("HVSUITE_CACHE_DIR") or REPO_ROOT / ".cache" / "hvsuite")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def lock(name: str, *, timeout: float) -> FileLock:
    """A lock shared by every process of this machine using the same cache directory."""
    locks = cache_dir() / "locks"
    locks.mkdir(exist_ok=True, mode=0o700)
    return FileLock(str(locks / f"{name}.lock"), timeout=timeout)


def scratch_keypair() -> tuple[Path, str]:
    """The key pair root logs in with on every scratch server: (private key path, public key line).
    Generated once (ed25519, private key mode 0600), reused afterwards."""
    private = cache_dir() / KEY_NAME
    public = private.with_suffix(".pub")
    with lock("keypair", timeout=30):
        if not (private.exists() and public.exists()):
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
            line = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            private.unlink(missing_ok=True)
            fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            public.write_text(line.decode() + " hvsuite-scratch\n")
        # ssh refuses a private key other users can read; repair a mode changed by hand.
        if private.stat().st_mode & 0o077:
            private.chmod(0o600)
    return private, public.read_text().strip()
