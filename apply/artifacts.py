"""Artifacts: pinned downloads that do not come from the OS package manager.

Each :class:`~settings.model.ArtifactPin` is fetched once on the controller, checked
against its sha256, and cached under ``.cache/hvsuite/artifacts/<sha256>``; xdist workers
share that cache (a file lock per artifact makes a second fetch a cache hit). An offline
mirror (``--artifacts-dir DIR``) replaces the network entirely: the file is found there by
the URL's basename or by its sha256. :func:`install` copies the (extracted) file to the
target only when the target's copy has a different sha256.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import filelock
import requests

from apply.facts import FileInfo, FileSha256
from apply.runner import ApplyError, Command, Host, OpResult, Put, check_path
from recipes.cache import sha256_file
from settings.base import ArtifactPin

_REPO_ROOT = Path(__file__).resolve().parents[1]


def default_cache_dir() -> Path:
    """``$HVSUITE_CACHE_DIR/artifacts``, else ``<repo>/.cache/hvsuite/artifacts`` (the same
    root the targets package caches keys and images under)."""
    root = os.environ.get("HVSUITE_CACHE_DIR")
    return (Path(root) if root else _REPO_ROOT / ".cache" / "hvsuite") / "artifacts"


_CHUNK = 1024 * 1024


class ArtifactError(ApplyError):
    """An artifact could not be fetched, found in the mirror, or extracted."""


class ChecksumMismatch(ArtifactError):
    def __init__(self, name: str, source: str, expected: str, actual: str) -> None:
        super().__init__(
            f"artifact {name!r} from {source}: sha256 mismatch: expected {expected}, got {actual}. "
            "Fix the pin in the config (artifacts.<name>.sha256) or the mirror's file; nothing was installed."
        )
        self.name = name
        self.expected = expected
        self.actual = actual


def _url_basename(url: str) -> str:
    return posixpath.basename(urllib.parse.urlparse(url).path)


class ArtifactStore:
    """Fetch, verify and cache pinned artifacts on the controller.

    ``artifacts_dir`` makes the store offline: nothing is downloaded, every artifact must
    be in that directory.
    """

    def __init__(
        self,
        pins: Mapping[str, ArtifactPin] | None = None,
        *,
        cache_dir: Path | str | None = None,
        artifacts_dir: Path | str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.pins: dict[str, ArtifactPin] = dict(pins or {})
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir is not None else None
        if self.artifacts_dir is not None and not self.artifacts_dir.is_dir():
            raise ValueError(f"--artifacts-dir {self.artifacts_dir} is not a directory")
        self.timeout = timeout
        # How each artifact was obtained in this process: "cache", "mirror" or "download".
        self.sources: dict[str, str] = {}

    def pin(self, name: str) -> ArtifactPin:
        try:
            return self.pins[name]
        except KeyError:
            known = ", ".join(sorted(self.pins)) or "none"
            raise ArtifactError(
                f"artifact {name!r} is not declared in the config (artifacts.{name}); declared: {known}"
            ) from None

    def fetch(self, name: str, pin: ArtifactPin | None = None) -> Path:
        """The verified local file for ``name``: the download itself, or its ``member``
        extracted from the archive."""
        pin = pin or self.pin(name)
        download = self._download(name, pin)
        if pin.member is None:
            return download
        return self._extract(name, pin, download)

    def fetch_all(self) -> dict[str, Path]:
        """Fetch every declared artifact (the controller does this once before workers start)."""
        return {name: self.fetch(name) for name in sorted(self.pins)}

    # -- internals -------------------------------------------------------------------

    def _download(self, name: str, pin: ArtifactPin) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        cached = self.cache_dir / pin.sha256
        with filelock.FileLock(self.cache_dir / f"{pin.sha256}.lock", poll_interval=0.05):
            if cached.is_file():
                if sha256_file(cached) == pin.sha256:
                    self.sources[name] = "cache"
                    return cached
                # A corrupted cache entry is not the pin's fault: drop it and fetch again.
                cached.unlink()
            if self.artifacts_dir is not None:
                source = self._from_mirror(name, pin)
                self._store_verified(name, str(source), pin.sha256, lambda out: _copy_into(source, out))
                self.sources[name] = "mirror"
            else:
                self._store_verified(name, pin.url, pin.sha256, lambda out: self._get(name, pin.url, out))
                self.sources[name] = "download"
        return cached

    def _from_mirror(self, name: str, pin: ArtifactPin) -> Path:
        assert self.artifacts_dir is not None
        candidates = [self.artifacts_dir / _url_basename(pin.url), self.artifacts_dir / pin.sha256]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise ArtifactError(
            f"artifact {name!r} is not in --artifacts-dir {self.artifacts_dir}: put it there as "
            f"{candidates[0].name!r} (the URL's basename) or {pin.sha256!r}"
        )

    def _store_verified(
        self, name: str, source: str, expected: str, write: Callable[[BinaryIO], None]
    ) -> None:
        fd, tmp_name = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{expected[:12]}-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            actual = sha256_file(tmp)
            if actual != expected:
                raise ChecksumMismatch(name, source, expected, actual)
            os.replace(tmp, self.cache_dir / expected)
        finally:
            tmp.unlink(missing_ok=True)

    def _get(self, name: str, url: str, out: BinaryIO) -> None:
        scheme = urllib.parse.urlparse(url).scheme
        try:
            if scheme == "file":
                path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
                _copy_into(path, out)
                return
            with requests.get(url, stream=True, timeout=self.timeout) as response:
                response.raise_for_status()
                for chunk in response.iter_content(_CHUNK):
                    out.write(chunk)
        except (OSError, requests.RequestException) as exc:
            raise ArtifactError(f"artifact {name!r}: cannot fetch {url}: {exc}") from exc

    def _extract(self, name: str, pin: ArtifactPin, archive: Path) -> Path:
        assert pin.member is not None
        member_path = PurePosixPath(pin.member)
        if member_path.is_absolute() or ".." in member_path.parts:
            raise ArtifactError(
                f"artifact {name!r}: member {pin.member!r} must be a relative path inside the archive"
            )
        target = self.cache_dir / f"{pin.sha256}.d" / member_path
        if target.is_file():
            return target
        try:
            with tarfile.open(archive, "r:*") as tar:
                try:
                    info = tar.getmember(pin.member)
                except KeyError:
                    names = tar.getnames()
                    sample = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
                    raise ArtifactError(
                        f"artifact {name!r}: no member {pin.member!r} in {pin.url} (it has: {sample})"
                    ) from None
                if not info.isfile():
                    raise ArtifactError(f"artifact {name!r}: member {pin.member!r} is not a regular file")
                source = tar.extractfile(info)
                assert source is not None
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                with source, tmp.open("wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
                os.replace(tmp, target)
        except tarfile.TarError as exc:
            raise ArtifactError(f"artifact {name!r}: {pin.url} is not a readable tar archive: {exc}") from exc
        return target


def _copy_into(path: Path, out: BinaryIO) -> None:
    with path.open("rb") as source:
        shutil.copyfileobj(source, out, _CHUNK)


def install(
    host: Host,
    store: ArtifactStore,
    name: str,
    pin: ArtifactPin | None = None,
    *,
    owner: str = "root",
    group: str = "root",
) -> OpResult:
    """The artifact's file at ``pin.dest`` with ``pin.mode``: copied only when the target's
    sha256 differs (or the file is missing); otherwise only owner/mode are corrected."""
    pin = pin or store.pin(name)
    if host.mode == "verify":
        return host.unchanged(f"artifact {name} {pin.version} -> {check_path(pin.dest)}", "verify-only")
    local = store.fetch(name, pin)
    want = sha256_file(local) if pin.member else pin.sha256
    return install_file(
        host, name, local, want, pin.dest, mode=pin.mode, version=pin.version, owner=owner, group=group
    )


def install_file(
    host: Host,
    name: str,
    local: Path,
    sha256: str,
    dest: str,
    *,
    version: str,
    mode: str = "0755",
    owner: str = "root",
    group: str = "root",
) -> OpResult:
    """A verified local file (its expected ``sha256``) at ``dest``: copied only when the
    target's sha256 differs or the file is missing; otherwise only owner/mode are corrected."""
    dest = check_path(dest)
    op = f"artifact {name} {version} -> {dest}"
    if host.mode == "verify":
        return host.unchanged(op, "verify-only")
    have = host.fact(FileSha256(dest))
    commands: list[Command] = []
    diff = None
    if have != sha256:
        parent = posixpath.dirname(dest)
        if host.fact(FileInfo(parent)) is None:
            commands.append(f"mkdir -p -- {shlex.quote(parent)}")
        commands.append(Put(dest, local.read_bytes(), mode, owner, group))
        diff = f"{dest}: sha256 {have or '(absent)'} -> {sha256} ({name} {version})\n"
    else:
        stat = host.fact(FileInfo(dest))
        assert stat is not None
        q = shlex.quote(dest)
        if (stat.user, stat.group) != (owner, group):
            commands.append(f"chown {shlex.quote(f'{owner}:{group}')} -- {q}")
        if stat.mode != mode:
            commands.append(f"chmod {mode} -- {q}")
    return host.execute(op, commands, diff=diff, reason="" if commands else "target already has this sha256")
