"""The recipe cache: each recipe's outputs built once per machine, kept outside the clone.

An entry is a directory ``<root>/<name>-<version>-<key>/`` holding ``manifest.json`` and
the outputs under ``files/``. It appears only complete: a build writes into a temporary
directory inside the root (same filesystem), the manifest is written and everything
fsynced, then one ``os.rename`` makes it the entry. A cross-process file lock per entry
means one build per machine; another process asking for the same entry waits for it and
then finds it in the cache. A build that fails, is interrupted or killed leaves no entry:
its temporary directory is removed on failure, and one left by a killed process is removed
by the next process holding the lock (a live builder would hold it).

Every output's sha256 is in the manifest and is checked again at every use
(`Entry.file`). A corrupted entry is an error that says how to fix it, never a silent
rebuild. `RecipeCache.export` copies an entry into ``<mirror>/recipes/`` (the
``--artifacts-dir`` an air-gapped operator carries); `RecipeCache.ensure` with ``mirror``
copies it from there instead of building.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import filelock

ENV_ROOT = "HVSUITE_RECIPE_CACHE"
MANIFEST = "manifest.json"
FILES = "files"
MIRROR_SUBDIR = "recipes"
FORMAT = 1
KEY_LENGTH = 16
_TMP_PREFIX = ".tmp-"
_CHUNK = 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

Log = Callable[[str], None]
Origin = Literal["cache", "mirror", "build"]


def _ignore(line: str) -> None:
    pass


class RecipeError(Exception):
    """A recipe could not be built, found, copied or verified; the message says how to fix it."""


def default_root() -> Path:
    """``$HVSUITE_RECIPE_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/hvsuite/recipes``: outside
    the repository clone, so a fresh clone (CI) reuses what the machine already built. A
    relative XDG_CACHE_HOME is ignored, as the XDG base directory specification says."""
    explicit = os.environ.get(ENV_ROOT)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "hvsuite" / "recipes"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Recipe:
    """How to build an artifact no registry ships, and every text its output depends on."""

    name: str
    version: str
    # Bumped when the procedure changes in a way `inputs` does not show.
    revision: str
    # Every text that determines the output (Containerfiles, source package version, base
    # image id, ...), by name.
    inputs: Mapping[str, str]
    # Writes the outputs into an empty directory; the second argument logs one line.
    build: Callable[[Path, Log], None] = field(compare=False)

    def __post_init__(self) -> None:
        for what, value in (("name", self.name), ("version", self.version)):
            if not _NAME.match(value):
                raise ValueError(
                    f"recipe {what} {value!r}: use letters, digits and . _ + - only (it names a directory)"
                )
        if not isinstance(self.revision, str):
            raise TypeError(f"recipe {self.name}: revision must be a str, got {type(self.revision).__name__}")
        inputs = dict(self.inputs)
        for key, value in inputs.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(
                    f"recipe {self.name}: inputs map str to str, got {key!r}: {type(value).__name__}"
                )
        object.__setattr__(self, "inputs", inputs)

    def __hash__(self) -> int:
        return hash((self.name, self.version, self.key))

    @property
    def key(self) -> str:
        """sha256 over name, version, revision and the sorted inputs: its first 16 hex digits."""
        text = json.dumps(
            [self.name, self.version, self.revision, sorted(self.inputs.items())],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return sha256_text(text)[:KEY_LENGTH]

    @property
    def entry_name(self) -> str:
        return f"{self.name}-{self.version}-{self.key}"


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` of an entry records."""

    name: str
    version: str
    revision: str
    key: str
    # input name -> sha256 of its text
    inputs: dict[str, str]
    # output path relative to ``files/`` ("/"-separated) -> its sha256 and size
    files: dict[str, FileRecord]
    # When the build started (ISO 8601, UTC), how long it took, and where it ran.
    built_at: str
    build_seconds: float
    build_host: str
    format: int = FORMAT

    @property
    def entry_name(self) -> str:
        return f"{self.name}-{self.version}-{self.key}"

    @property
    def size(self) -> int:
        return sum(record.size for record in self.files.values())

    def to_json(self) -> str:
        data = {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "revision": self.revision,
            "key": self.key,
            "inputs": dict(sorted(self.inputs.items())),
            "files": {
                path: {"sha256": record.sha256, "size": record.size}
                for path, record in sorted(self.files.items())
            },
            "built_at": self.built_at,
            "build_seconds": self.build_seconds,
            "build_host": self.build_host,
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, this suite reads format {FORMAT}")
            files = {}
            for path, record in data["files"].items():
                _check_relpath(path)
                files[path] = FileRecord(sha256=str(record["sha256"]), size=int(record["size"]))
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                revision=str(data["revision"]),
                key=str(data["key"]),
                inputs={str(k): str(v) for k, v in data["inputs"].items()},
                files=files,
                built_at=str(data["built_at"]),
                build_seconds=float(data["build_seconds"]),
                build_host=str(data["build_host"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RecipeError(f"{source}: not a valid recipe manifest: {exc}") from None


def _check_relpath(path: str) -> None:
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or str(pure) != path:
        raise ValueError(f"file path {path!r} must be a plain relative path")


def _fix_hint(name: str, path: Path) -> str:
    return f"Fix: python -m recipes rebuild {name} (or remove {path})"


class Entry:
    """A complete entry of the cache (or of a mirror): its directory and manifest."""

    def __init__(self, path: Path, manifest: Manifest, origin: Origin = "cache") -> None:
        self.path = path
        self.manifest = manifest
        # How this process obtained it: found in the cache, copied from a mirror, or built.
        self.origin: Origin = origin

    @classmethod
    def load(cls, path: Path, origin: Origin = "cache") -> Entry:
        """The entry at ``path`` (its manifest read and checked against the directory's name)."""
        manifest_path = path / MANIFEST
        try:
            text = manifest_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RecipeError(
                f"{path}: no readable {MANIFEST} ({exc.strerror or exc}); it is not a complete recipe entry. "
                f"Fix: remove {path}"
            ) from None
        manifest = Manifest.from_json(text, manifest_path)
        if manifest.entry_name != path.name:
            raise RecipeError(
                f"{manifest_path} describes {manifest.entry_name}, not {path.name}. Fix: remove {path}"
            )
        return cls(path, manifest, origin)

    def __repr__(self) -> str:
        return f"Entry({str(self.path)!r}, origin={self.origin!r})"

    @property
    def name(self) -> str:
        return self.manifest.entry_name

    @property
    def files_dir(self) -> Path:
        return self.path / FILES

    def files(self) -> list[str]:
        """The outputs' paths relative to the entry, sorted."""
        return sorted(self.manifest.files)

    def file(self, relpath: str | PurePosixPath) -> Path:
        """The output ``relpath``, after checking its sha256 against the manifest (at every call)."""
        key = PurePosixPath(relpath).as_posix()
        record = self.manifest.files.get(key)
        if record is None:
            raise RecipeError(
                f"recipe entry {self.name} has no output {key!r}; it has: {', '.join(self.files()) or 'none'}"
            )
        problem = self._check(key, record)
        if problem is not None:
            raise RecipeError(self._corrupt([problem]))
        return self.files_dir / key

    def verify(self) -> None:
        """Check every output against the manifest (and that no other file is there)."""
        problems = self.problems()
        if problems:
            raise RecipeError(self._corrupt(problems))

    def problems(self) -> list[str]:
        """What differs from the manifest, one line per file (empty: the entry is intact)."""
        checked = (self._check(key, record) for key, record in sorted(self.manifest.files.items()))
        problems = [problem for problem in checked if problem is not None]
        if self.files_dir.is_dir():
            for path in _walk_files(self.files_dir):
                relpath = path.relative_to(self.files_dir).as_posix()
                if relpath not in self.manifest.files:
                    problems.append(f"{relpath}: not in the manifest")
        else:
            problems.append(f"{FILES}/: missing")
        return problems

    def _check(self, relpath: str, record: FileRecord) -> str | None:
        path = self.files_dir / relpath
        try:
            info = path.lstat()
        except FileNotFoundError:
            return f"{relpath}: expected sha256 {record.sha256}, actual: missing"
        if not stat.S_ISREG(info.st_mode):
            return f"{relpath}: expected sha256 {record.sha256}, actual: not a regular file"
        actual = sha256_file(path)
        if actual != record.sha256 or info.st_size != record.size:
            size = "" if info.st_size == record.size else f" (size {info.st_size}, expected {record.size})"
            return f"{relpath}: expected sha256 {record.sha256}, actual {actual}{size}"
        return None

    def _corrupt(self, problems: list[str]) -> str:
        lines = "\n".join(f"  {problem}" for problem in problems)
        return (
            f"recipe entry {self.path} is corrupt (its files differ from {MANIFEST}):\n{lines}\n"
            f"{_fix_hint(self.manifest.name, self.path)}"
        )


class RecipeCache:
    """Recipe outputs on this machine, under `root` (default: `default_root()`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def entry_dir(self, recipe: Recipe) -> Path:
        return self.root / recipe.entry_name

    def lookup(self, recipe: Recipe) -> Entry | None:
        """The cached entry of `recipe` (not verified), or None when it was never built."""
        path = self.entry_dir(recipe)
        return Entry.load(path) if path.exists() else None

    def entry_dirs(self) -> list[Path]:
        """Every entry directory in the cache (complete or not), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def ensure(self, recipe: Recipe, *, mirror: Path | None = None, log: Log = _ignore) -> Entry:
        """The verified entry of `recipe`: from the cache, else copied from ``<mirror>/recipes/``,
        else built. One process at a time per entry; the others wait and find it cached."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.entry_dir(recipe)
        with _locked(self.root / f"{recipe.entry_name}.lock", recipe.entry_name, log):
            if path.exists():
                entry = Entry.load(path)
                entry.verify()
                log(f"{recipe.entry_name}: in the cache ({self.root})")
                return entry
            _remove_leftovers(self.root, recipe.entry_name, log)
            source = _mirror_entry(mirror, recipe.entry_name)
            if source is not None:
                return self._copy_from_mirror(recipe, source, log)
            if mirror is not None:
                log(f"{recipe.entry_name}: not in the mirror {mirror / MIRROR_SUBDIR}; building it")
            return self._build(recipe, log)

    def remove(self, recipe: Recipe) -> bool:
        """Remove the entry of `recipe` (under its lock); whether there was one."""
        path = self.entry_dir(recipe)
        if not path.exists():
            return False
        with _locked(self.root / f"{recipe.entry_name}.lock", recipe.entry_name, _ignore):
            if not path.exists():
                return False
            # Out of sight at once (a rename), then deleted.
            doomed = _tmp_dir(self.root, recipe.entry_name, create=False)
            os.rename(path, doomed)
            _remove_tree(doomed)
        return True

    def export(self, item: Recipe | Entry, mirror_dir: Path, *, log: Log = _ignore) -> Path:
        """Copy the (verified) entry into ``<mirror_dir>/recipes/<entry name>/``, atomically;
        returns that directory. A valid copy of the same entry already there is kept, an
        invalid one replaced."""
        if isinstance(item, Recipe):
            entry = self.lookup(item)
            if entry is None:
                raise RecipeError(
                    f"recipe {item.name} {item.version} is not in the cache {self.root} ({item.entry_name}). "
                    f"Fix: python -m recipes build {item.name}"
                )
        else:
            entry = item
        entry.verify()
        recipes_dir = Path(mirror_dir) / MIRROR_SUBDIR
        recipes_dir.mkdir(parents=True, exist_ok=True)
        target = recipes_dir / entry.name
        # The lock is kept in the cache, so the mirror holds nothing but entries.
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / f"{entry.name}.export.lock", entry.name, log):
            if target.exists():
                try:
                    existing = Entry.load(target)
                    existing.verify()
                except RecipeError as exc:
                    log(f"{entry.name}: replacing the invalid copy in {recipes_dir}: {exc}")
                    doomed = _tmp_dir(recipes_dir, entry.name, create=False)
                    os.rename(target, doomed)
                    _remove_tree(doomed)
                else:
                    # Same key: the same recipe and inputs (perhaps built at another time or place).
                    built = f"built {existing.manifest.built_at} on {existing.manifest.build_host}"
                    log(f"{entry.name}: already in {recipes_dir} ({built}); kept")
                    return target
            _remove_leftovers(recipes_dir, entry.name, log)

            def corrupt(problems: str) -> str:
                return f"copying {entry.path} to {recipes_dir} changed it:\n{problems}\nFix: export it again"

            _install(entry, recipes_dir, (entry.path / MANIFEST).read_text(encoding="utf-8"), corrupt)
        log(f"{entry.name}: exported to {target}")
        return target

    # -- internals -------------------------------------------------------------------

    def _copy_from_mirror(self, recipe: Recipe, source: Path, log: Log) -> Entry:
        mirrored = Entry.load(source, origin="mirror")
        manifest = mirrored.manifest
        if (manifest.name, manifest.version, manifest.key) != (recipe.name, recipe.version, recipe.key):
            raise RecipeError(
                f"{source / MANIFEST} does not describe {recipe.entry_name}. Fix: remove {source}"
            )
        log(f"{recipe.entry_name}: copying from the mirror {source}")

        def corrupt(problems: str) -> str:
            return (
                f"the mirror's copy {source} differs from its {MANIFEST}:\n{problems}\n"
                f"Fix: export it again (python -m recipes export {recipe.name} DIR) or remove {source}"
            )

        path = _install(mirrored, self.root, (source / MANIFEST).read_text(encoding="utf-8"), corrupt)
        return Entry(path, manifest, origin="mirror")

    def _build(self, recipe: Recipe, log: Log) -> Entry:
        tmp = _tmp_dir(self.root, recipe.entry_name)
        try:
            outputs = tmp / FILES
            outputs.mkdir()
            built_at = datetime.now(UTC).isoformat(timespec="seconds")
            log(f"{recipe.entry_name}: building ({recipe.name} {recipe.version}, revision {recipe.revision})")
            started = time.monotonic()
            recipe.build(outputs, log)
            seconds = round(time.monotonic() - started, 3)
            files = _record_files(outputs, recipe.name)
            if not files:
                raise RecipeError(
                    f"recipe {recipe.name} {recipe.version} built nothing (its output directory is empty)"
                )
            manifest = Manifest(
                name=recipe.name,
                version=recipe.version,
                revision=recipe.revision,
                key=recipe.key,
                inputs={name: sha256_text(text) for name, text in sorted(recipe.inputs.items())},
                files=files,
                built_at=built_at,
                build_seconds=seconds,
                build_host=socket.gethostname(),
            )
            path = _commit(tmp, manifest.to_json(), self.root / recipe.entry_name)
        except BaseException:
            _discard(tmp)
            raise
        size = human_size(manifest.size)
        log(f"{recipe.entry_name}: built in {seconds:.1f} s ({len(files)} file(s), {size})")
        return Entry(path, manifest, origin="build")


@contextlib.contextmanager
def _locked(path: Path, what: str, log: Log) -> Iterator[None]:
    lock = filelock.FileLock(path, poll_interval=0.1)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log(f"{what}: waiting for another process (lock {path})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _tmp_dir(parent: Path, entry_name: str, *, create: bool = True) -> Path:
    path = parent / f"{_TMP_PREFIX}{entry_name}-{os.getpid()}-{secrets.token_hex(4)}"
    if create:
        path.mkdir()
    return path


def _remove_leftovers(parent: Path, entry_name: str, log: Log) -> None:
    """Temporary directories of this entry found while holding its lock belong to processes
    that died before finishing (a live one would hold the lock)."""
    prefix = f"{_TMP_PREFIX}{entry_name}-"
    for path in sorted(parent.iterdir()):
        if path.name.startswith(prefix):
            log(f"{entry_name}: removing {path.name}, left by an interrupted build or copy")
            _remove_tree(path)


def _mirror_entry(mirror: Path | None, entry_name: str) -> Path | None:
    if mirror is None:
        return None
    candidate = Path(mirror) / MIRROR_SUBDIR / entry_name
    return candidate if candidate.is_dir() else None


def _walk_files(directory: Path) -> Iterator[Path]:
    for current, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            yield Path(current, name)


def _record_files(outputs: Path, recipe_name: str) -> dict[str, FileRecord]:
    """Every output file's sha256 and size; anything but regular files and directories is refused."""
    files: dict[str, FileRecord] = {}
    for current, dirs, names in os.walk(outputs):
        for name in [*dirs, *names]:
            path = Path(current, name)
            info = path.lstat()
            relpath = path.relative_to(outputs).as_posix()
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise RecipeError(
                    f"recipe {recipe_name}: output {relpath} is not a regular file (symlinks, devices and "
                    "sockets cannot be checksummed); write a regular file instead"
                )
            files[relpath] = FileRecord(sha256_file(path), info.st_size)
    return dict(sorted(files.items()))


def _install(entry: Entry, parent: Path, manifest_text: str, corrupt: Callable[[str], str]) -> Path:
    """Copy `entry`'s files into a new temporary directory under `parent`, check the copies
    against the manifest, and rename it to ``parent/<entry name>``. `corrupt` turns the list
    of differences into the error's message."""
    tmp = _tmp_dir(parent, entry.name)
    try:
        for relpath in entry.files():
            target = tmp / FILES / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(entry.files_dir / relpath, target)
            except FileNotFoundError:
                raise RecipeError(corrupt(f"  {relpath}: missing")) from None
        problems = Entry(tmp, entry.manifest).problems()
        if problems:
            raise RecipeError(corrupt("\n".join(f"  {problem}" for problem in problems)))
        return _commit(tmp, manifest_text, parent / entry.name)
    except BaseException:
        _discard(tmp)
        raise


def _commit(tmp: Path, manifest_text: str, target: Path) -> Path:
    """Write the manifest, fsync the whole tree, and rename it to `target`."""
    manifest_path = tmp / MANIFEST
    with manifest_path.open("w", encoding="utf-8") as handle:
        handle.write(manifest_text)
    _fsync_tree(tmp)
    os.rename(tmp, target)
    _fsync_dir(target.parent)
    return target


def _fsync_tree(directory: Path) -> None:
    for current, _dirs, names in os.walk(directory):
        for name in names:
            fd = os.open(os.path.join(current, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(current))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Remove `path`, making read-only directories of a build writable first."""

    def retry(function: Callable[..., Any], failed: str, _exc: object) -> None:
        parent = os.path.dirname(failed)
        with contextlib.suppress(OSError):
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
        function(failed)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=retry)


def _discard(path: Path) -> None:
    """Remove a temporary directory on the way out of a failure; a directory that cannot be
    removed now is removed by the next process that holds the entry's lock."""
    with contextlib.suppress(OSError):
        _remove_tree(path)


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"
