"""Idempotent operations: read facts, compare with the desired state, emit commands only
for what differs, and let the runner execute (or, under --check, record) them.

Every op takes the :class:`~apply.runner.Host` first and returns an
:class:`~apply.runner.OpResult`. In verify mode an op returns at once ("verify-only")
without reading anything. Host-wide resources are serialized across xdist workers with
``Host.lock``: the package manager ("apt"), systemd's manager state ("systemd"); team
steps use "firewall" for ruleset loads.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from apply.facts import (
    AptListsAge,
    CommandSucceeds,
    DebPackages,
    FileInfo,
    FileStat,
    ServiceState,
    Sysctl,
    normalize_sysctl,
)
from apply.runner import ApplyError, Command, Host, OpResult, Put, check_file_mode, check_path

# Waits for dpkg's own lock (unattended-upgrades, a human) instead of failing at once;
# the suite's parallel teams are serialized earlier by the host-wide "apt" lock.
APT_GET = (
    "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 "
    "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
)
APT_CACHE_MAX_AGE = 24 * 3600.0


def apt_update_command(*, attempts: int = 120, poll: float = 5.0) -> str:
    """``apt-get update`` that waits for the package lists' lock as install waits for dpkg's:
    DPkg::Lock::Timeout does not cover /var/lib/apt/lists/lock, which apt-daily holds on a
    host that just booted. Any other failure (or 10 minutes of waiting) fails as usual."""
    return (
        f"( for attempt in $(seq {attempts}); do "
        f'out=$({APT_GET} update 2>&1) && exit 0; case "$out" in *"Could not get lock"*) '
        f"sleep {poll};; *) break;; esac; done; "
        "printf '%s\\n' \"$out\" >&2; exit 100 )"
    )


_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(?::[a-z0-9-]+)?(?:=[A-Za-z0-9.+:~-]+)?$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]*$")


def _verify_only(host: Host, op: str) -> OpResult | None:
    if host.mode == "verify":
        return host.unchanged(op, "verify-only")
    return None


def unified_diff(path: str, old: bytes | None, new: bytes) -> str:
    """A unified diff of a file's old (None: absent) and new content; a one-line note for binary."""
    try:
        old_text = (old or b"").decode()
        new_text = new.decode()
    except UnicodeDecodeError:
        return f"binary content of {path} differs ({len(old or b'')} -> {len(new)} bytes)\n"
    lines = difflib.unified_diff(
        old_text.splitlines(keepends=True),
        new_text.splitlines(keepends=True),
        fromfile=f"a{path}" if old is not None else "/dev/null",
        tofile=f"b{path}",
    )
    no_newline = "\n\\ No newline at end of file\n"
    return "".join(line if line.endswith("\n") else line + no_newline for line in lines)


# Kept for team steps written against the earlier private name.
_unified_diff = unified_diff


# -- packages ---------------------------------------------------------------------------


def packages(
    host: Host,
    names: Iterable[str],
    *,
    present: bool = True,
    cache_max_age: float = APT_CACHE_MAX_AGE,
) -> OpResult:
    """Debian packages installed (one ``apt-get install`` for all missing) or removed.

    ``name=version`` pins a version. The package lists are refreshed only when missing or
    older than ``cache_max_age`` seconds. Held under the host-wide "apt" lock.
    """
    wanted = sorted(set(names))
    for name in wanted:
        if not _PACKAGE.match(name):
            raise ValueError(f"package name {name!r} is not a Debian package name (optionally name=version)")
    op = f"packages {'present' if present else 'absent'}: {', '.join(wanted)}"
    if (skipped := _verify_only(host, op)) is not None:
        return skipped
    if not wanted:
        return host.unchanged(op, "no packages given")
    with host.lock("apt"):
        # Read under the lock: another worker may be installing the same packages now.
        host.invalidate_facts()
        installed = host.fact(DebPackages())
        commands: list[Command] = []
        if present:
            missing = []
            for spec in wanted:
                name, _, version = spec.partition("=")
                have = installed.get(name.split(":")[0])
                if have is None or (version and have != version):
                    missing.append(spec)
            if missing:
                age = host.fact(AptListsAge())
                if age is None or age > cache_max_age:
                    commands.append(apt_update_command())
                commands.append(
                    f"{APT_GET} install --no-install-recommends " + " ".join(shlex.quote(m) for m in missing)
                )
        else:
            extra = [spec for spec in wanted if spec.split("=")[0].split(":")[0] in installed]
            if extra:
                commands.append(f"{APT_GET} remove " + " ".join(shlex.quote(e.split("=")[0]) for e in extra))
        return host.execute(op, commands)


# -- files ------------------------------------------------------------------------------


def _metadata_commands(path: str, stat: FileStat, owner: str, group: str, mode: str) -> list[Command]:
    commands: list[Command] = []
    q = shlex.quote(path)
    if (stat.user, stat.group) != (owner, group):
        commands.append(f"chown {shlex.quote(f'{owner}:{group}')} -- {q}")
    if stat.mode != mode.zfill(4):
        commands.append(f"chmod {mode} -- {q}")
    return commands


def _write(
    host: Host,
    op: str,
    path: str,
    data: bytes,
    *,
    owner: str,
    group: str,
    mode: str,
    validate: str | None,
    sensitive: bool,
    lock: str | None,
    current: bytes | None,
    stat: FileStat | None,
) -> OpResult:
    commands: list[Command]
    diff: str | None = None
    if current != data:
        commands = [Put(path, data, mode, owner, group, validate)]
        diff = (
            f"content of {path} changes (not shown: sensitive)\n"
            if sensitive
            else unified_diff(path, current, data)
        )
    else:
        assert stat is not None  # current is not None only when the file exists
        commands = _metadata_commands(path, stat, owner, group, mode)
    return host.execute(op, commands, diff=diff, lock=lock)


def _regular_file_stat(host: Host, path: str) -> FileStat | None:
    stat = host.fact(FileInfo(path))
    if stat is not None and stat.type != "file":
        raise ApplyError(f"[{host.name}] {path} is a {stat.type}, not a regular file; remove it first")
    return stat


def file_state(host: Host, path: str) -> tuple[FileStat | None, bytes | None]:
    """A regular file's stat and content, ``(None, None)`` when absent; ApplyError when the
    path is something else. For steps that swap a file themselves (under a guard) but compare
    content, owner and mode the way :func:`file` does."""
    path = check_path(path)
    stat = _regular_file_stat(host, path)
    return stat, host.read(path) if stat is not None else None


def metadata_commands(
    path: str, stat: FileStat | None, *, owner: str = "root", group: str = "root", mode: str = "0644"
) -> list[Command]:
    """chown/chmod for an existing file whose owner, group or mode drifted (none if absent)."""
    if stat is None:
        return []
    _check_owner(owner, group)
    return _metadata_commands(check_path(path), stat, owner, group, check_file_mode(mode))


def file(
    host: Host,
    path: str,
    content: str | bytes,
    *,
    owner: str = "root",
    group: str = "root",
    mode: str = "0644",
    validate: str | None = None,
    sensitive: bool = False,
    lock: str | None = None,
) -> OpResult:
    """A file with exactly ``content``, owner, group and mode.

    New content is written with check, validate, swap (see ``Host.put``): ``validate`` is a
    command with ``{path}`` run against the temp file (``sshd -t -f {path}``). The diff is
    recorded (redacted) unless ``sensitive``. Restart services only when the result changed.
    """
    path = check_path(path)
    mode = check_file_mode(mode)
    _check_owner(owner, group)
    op = f"file {path}"
    if (skipped := _verify_only(host, op)) is not None:
        return skipped
    data = content.encode() if isinstance(content, str) else content
    stat = _regular_file_stat(host, path)
    current = host.read(path) if stat is not None else None
    return _write(
        host,
        op,
        path,
        data,
        owner=owner,
        group=group,
        mode=mode,
        validate=validate,
        sensitive=sensitive,
        lock=lock,
        current=current,
        stat=stat,
    )


def render(template: Path, context: Mapping[str, Any] | None = None) -> str:
    """Render a Jinja2 template file (each team keeps its own under its package's templates/).

    Undefined variables are errors, not empty strings.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    try:
        return env.get_template(template.name).render(**(context or {}))
    except jinja2.TemplateNotFound as exc:
        raise ValueError(f"template {template} not found") from exc
    except jinja2.UndefinedError as exc:
        raise ValueError(f"template {template}: {exc} (pass it in the context)") from exc


def template(
    host: Host,
    path: str,
    source: Path,
    context: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> OpResult:
    """``file`` with content rendered from a Jinja2 template (see :func:`render`)."""
    return file(host, path, render(source, context), **kwargs)


def line(
    host: Host,
    path: str,
    text: str,
    *,
    regex: str | None = None,
    present: bool = True,
    owner: str | None = None,
    group: str | None = None,
    mode: str | None = None,
    validate: str | None = None,
) -> OpResult:
    """A line present in (or absent from) a file.

    With ``regex``, lines matching it are replaced by ``text`` (present) or removed
    (absent); without, ``text`` is appended if missing. Owner, group and mode default to
    the file's current ones (root:root 0644 for a new file).
    """
    path = check_path(path)
    if "\n" in text:
        raise ValueError(f"line {text!r} contains a newline; use ops.file for blocks")
    pattern = re.compile(regex) if regex is not None else None
    op = f"line {'in' if present else 'not in'} {path}: {text if pattern is None else pattern.pattern}"
    if (skipped := _verify_only(host, op)) is not None:
        return skipped
    stat = _regular_file_stat(host, path)
    current = host.read(path) if stat is not None else None
    if current is None and not present:
        return host.unchanged(op, f"{path} does not exist")
    old_lines = (current or b"").decode().splitlines()

    def matches(candidate: str) -> bool:
        return candidate == text or (pattern is not None and pattern.search(candidate) is not None)

    if present:
        if any(matches(candidate) for candidate in old_lines):
            new_lines, replaced = [], False
            for candidate in old_lines:
                if matches(candidate):
                    # Keep one copy where the first match was; drop later duplicates.
                    if not replaced:
                        new_lines.append(text)
                    replaced = True
                else:
                    new_lines.append(candidate)
        else:
            new_lines = [*old_lines, text]
    else:
        new_lines = [candidate for candidate in old_lines if not matches(candidate)]
    new = ("\n".join(new_lines) + "\n").encode() if new_lines else b""
    if current is not None and new_lines == old_lines:
        # Same lines: keep the file's own trailing-newline choice rather than rewrite it.
        new = current
    owner = owner or (stat.user if stat else "root")
    group = group or (stat.group if stat else "root")
    mode = check_file_mode(mode or (stat.mode if stat else "0644"))
    _check_owner(owner, group)
    return _write(
        host,
        op,
        path,
        new,
        owner=owner,
        group=group,
        mode=mode,
        validate=validate,
        sensitive=False,
        lock=None,
        current=current,
        stat=stat,
    )


def metadata(
    host: Host, path: str, *, owner: str = "root", group: str = "root", mode: str = "0644"
) -> OpResult:
    """Owner, group and mode of a file another program writes (its content is not ours)."""
    path = check_path(path)
    op = f"metadata {path}"
    if (skipped := _verify_only(host, op)) is not None:
        return skipped
    stat = _regular_file_stat(host, path)
    if stat is None and host.mode == "apply":
        raise ApplyError(f"[{host.name}] {path} does not exist; the step that writes it must run first")
    return host.execute(op, metadata_commands(path, stat, owner=owner, group=group, mode=mode))


def directory(
    host: Host, path: str, *, owner: str = "root", group: str = "root", mode: str = "0755"
) -> OpResult:
    """A directory (parents created as needed) with owner, group and mode."""
    path = check_path(path)
    mode = check_file_mode(mode)
    _check_owner(owner, group)
    op = f"directory {path}"
    if (skipped := _verify_only(host, op)) is not None:
        return skipped
    stat = host.fact(FileInfo(path))
    q = shlex.quote(path)
    if stat is None:
        commands: list[Command] = [
            f"mkdir -p -- {q}",
            f"chown {shlex.quote(f'{owner}:{group}')} -- {q}",
            f"chmod {mode} -- {q}",
        ]
    elif stat.type != "directory":
        raise ApplyError(f"[{host.name}] {path} is a {stat.type}, not a directory; remove it first")
    else:
        commands = _metadata_commands(path, stat, owner, group, mode)
    return host.execute(op, commands)


def absent(host: Host, path: str, *, recursive: bool = False) -> OpResult:
    """A path that does not exist. Directories are removed only with ``recursive=True``."""
    path = check_path(path)
    if path == "/":
        raise ValueError("refusing to remove '/'")
    op = f"absent {path}"
    if (skipped := _verify_only(host, op)) is not None:
        return skipped
    stat = host.fact(FileInfo(path))
    if stat is None:
        return host.execute(op, [])
    if stat.type == "directory" and not recursive:
        raise ApplyError(f"[{host.name}] {path} is a directory; pass recursive=True to remove it")
    flags = "-rf" if stat.type == "directory" else "-f"
    return host.execute(op, [f"rm {flags} -- {shlex.quote(path)}"])


# -- services ---------------------------------------------------------------------------


def service(
    host: Host,
    name: str,
    *,
    enabled: bool | None = True,
    running: bool | None = True,
    restart: bool = False,
    reload: bool = False,
) -> OpResult:
    """A systemd unit enabled/disabled and running/stopped (None = leave as it is).

    ``restart``/``reload``: the caller's config changed (pass ``result.changed``); a unit
    that is started by this op is not restarted again. Unit files changed on disk are
    picked up with a daemon-reload first.
    """
    if not _NAME.match(name):
        raise ValueError(f"service name {name!r} is not a systemd unit name")
    op = f"service {name}"
    if (skipped := _verify_only(host, op)) is not None:
        return skipped
    status = host.fact(ServiceState(name))
    q = shlex.quote(name)
    if not status.exists and host.mode == "apply":
        raise ApplyError(
            f"[{host.name}] unit {name} not found (load state {status.load_state!r}); install it or "
            "write its unit file (then ops.daemon_reload) before ops.service"
        )
    commands: list[Command] = []
    uses_systemd_state = False
    if status.need_daemon_reload:
        commands.append("systemctl daemon-reload")
        uses_systemd_state = True
    if enabled is True and not status.enabled:
        commands.append(f"systemctl enable -- {q}")
        uses_systemd_state = True
    elif enabled is False and status.unit_file_state in ("enabled", "enabled-runtime"):
        commands.append(f"systemctl disable -- {q}")
        uses_systemd_state = True
    if running is True and not status.running:
        commands.append(f"systemctl start -- {q}")
    elif running is True and restart:
        commands.append(f"systemctl restart -- {q}")
    elif running is True and reload:
        commands.append(f"systemctl reload-or-restart -- {q}")
    elif running is False and status.running:
        commands.append(f"systemctl stop -- {q}")
    reason = "" if status.exists else f"unit {name} not present yet (check mode)"
    return host.execute(op, commands, lock="systemd" if uses_systemd_state else None, reason=reason)


def daemon_reload(host: Host, *, units: Iterable[str] = (), force: bool = False) -> OpResult:
    """``systemctl daemon-reload`` when ``force`` (a unit file changed: pass
    ``result.changed``) or when systemd reports that one of ``units`` needs it."""
    units = list(units)
    op = "systemd daemon-reload"
    if (skipped := _verify_only(host, op)) is not None:
        return skipped
    needed = force or any(host.fact(ServiceState(unit)).need_daemon_reload for unit in units)
    return host.execute(op, ["systemctl daemon-reload"] if needed else [], lock="systemd")


# -- kernel -----------------------------------------------------------------------------


def sysctls(
    host: Host, values: Mapping[str, str | int], *, persist_file: str = "/etc/sysctl.d/90-hvsuite.conf"
) -> OpResult:
    """Live sysctl values set (``sysctl -w``) and persisted in ``persist_file`` (give
    each team its own file so teams never rewrite each other's)."""
    persist_file = check_path(persist_file)
    desired = {key: normalize_sysctl(str(value)) for key, value in sorted(values.items())}
    op = f"sysctls {persist_file}: {', '.join(desired)}"
    if (skipped := _verify_only(host, op)) is not None:
        return skipped
    commands: list[Command] = []
    for key, value in desired.items():
        live = host.fact(Sysctl(key))
        if live is None:
            raise ApplyError(f"[{host.name}] sysctl {key} does not exist on this kernel (check the key)")
        if live != value:
            commands.append(f"sysctl -w {shlex.quote(f'{key}={value}')}")
    content = ("# Managed by hvsuite.\n" + "".join(f"{k} = {v}\n" for k, v in desired.items())).encode()
    stat = _regular_file_stat(host, persist_file)
    current = host.read(persist_file) if stat is not None else None
    diff = None
    if current != content:
        commands.insert(0, Put(persist_file, content, "0644", "root", "root"))
        diff = unified_diff(persist_file, current, content)
    elif stat is not None:
        commands[:0] = _metadata_commands(persist_file, stat, "root", "root", "0644")
    return host.execute(op, commands, diff=diff)


# -- commands ---------------------------------------------------------------------------


def command(
    host: Host,
    shell: str,
    *,
    creates: str | None = None,
    unless: str | None = None,
    name: str | None = None,
    lock: str | None = None,
    secrets: Iterable[str] = (),
) -> OpResult:
    """A shell command run only when ``creates`` (a path) does not exist and ``unless``
    (a command) fails. Without either it runs every time and says so: it cannot settle."""
    op = f"command {name or shell}"
    if (skipped := _verify_only(host, op)) is not None:
        return skipped
    secrets = tuple(secrets)
    if creates is not None and host.fact(FileInfo(check_path(creates))) is not None:
        return host.unchanged(op, f"{creates} exists")
    if unless is not None and host.fact(CommandSucceeds(unless)):
        return host.unchanged(op, f"'unless' command succeeded: {unless}")
    reason = "" if creates or unless else "no creates/unless: runs every time"
    return host.execute(op, [shell], lock=lock, reason=reason, secrets=secrets)


def _check_owner(owner: str, group: str) -> None:
    for field_name, value in (("owner", owner), ("group", group)):
        if not _NAME.match(value):
            raise ValueError(f"{field_name} {value!r} is not a user/group name")
