"""Check helpers for backups and restores (Team Golf-1): the sha256 of every file of a tree
on a host, their comparison, and Prometheus and etcd queries run on a host's loopback.

Read-only: they read files and ask servers; the restore drill that writes the restored tree
and starts the throwaway servers is the phase module's, which removes them again.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from apply.runner import Host


def digest_command(root: str, paths: list[str]) -> str:
    """Prints ``<sha256>  <path>`` for each regular file and ``-> <target>  <path>`` for each
    symlink under ``paths``, relative to ``root`` (so a source and its restored copy list the
    same names); paths that do not exist are left out."""
    relative = " ".join(shlex.quote(path.lstrip("/")) for path in paths)
    return (
        f'cd {shlex.quote(root)} && for p in {relative}; do [ -e "$p" ] || [ -L "$p" ] || continue; '
        'find "$p" -type f -print0 | xargs -0r sha256sum; '
        "find \"$p\" -type l -printf '-> %l  %p\\n'; done"
    )


def parse_digests(output: str) -> dict[str, str]:
    digests: dict[str, str] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        value, _, path = line.partition("  ")
        digests[path] = value
    return digests


def digests(host: Host, root: str, paths: list[str]) -> dict[str, str]:
    return parse_digests(host.run(digest_command(root, paths), timeout=600).stdout)


@dataclass(frozen=True)
class Comparison:
    """Restored files against the source, read before and after the backup."""

    compared: dict[str, str]  # path -> digest, equal in source and restore
    changed_during_backup: dict[str, tuple[str, str, str | None]]  # path -> (before, after, restored)
    missing: list[str]  # in the source (unchanged during the backup), not restored
    different: dict[str, tuple[str, str]]  # path -> (source, restored)
    extra: list[str] = field(default_factory=list)  # restored, in neither source listing

    @property
    def problems(self) -> list[str]:
        lines = [f"not restored: {path}" for path in self.missing]
        lines += [f"differs: {path} source {a} restored {b}" for path, (a, b) in self.different.items()]
        lines += [
            f"changed while the backup ran and restored as neither version: {path}"
            for path, (before, after, restored) in self.changed_during_backup.items()
            if restored not in (before, after)
        ]
        return lines

    def listing(self, withheld: tuple[str, ...] = ()) -> str:
        """The compared files with their sha256; ``withheld`` paths (secrets) by name only."""

        def shown(path: str, digest: str) -> str:
            return "(digest withheld: a secret)" if f"/{path}" in withheld else digest

        rows = [f"{shown(path, digest)}  /{path}" for path, digest in sorted(self.compared.items())]
        rows += [
            f"{shown(path, restored or 'absent')}  /{path}  (changed on the source during the backup)"
            for path, (before, after, restored) in sorted(self.changed_during_backup.items())
        ]
        return "\n".join(rows) + "\n"


def compare(
    before: dict[str, str],
    after: dict[str, str],
    restored: dict[str, str],
    *,
    written_by_backup: tuple[str, ...] = (),
) -> Comparison:
    """A file unchanged on the source across the backup must be restored byte for byte; one
    that changed meanwhile (another team at work) must be restored as one of its versions; a
    file that appeared or vanished meanwhile is left out. Files under ``written_by_backup``
    (relative prefixes: the snapshots the backup run stages before restic reads them) are
    held to their version after the backup."""

    def staged(path: str) -> bool:
        return any(
            path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in written_by_backup
        )

    before = {path: digest for path, digest in before.items() if not staged(path)}
    before |= {path: digest for path, digest in after.items() if staged(path)}
    stable = {path: digest for path, digest in before.items() if after.get(path) == digest}
    changed = {
        path: (digest, after[path], restored.get(path))
        for path, digest in before.items()
        if path in after and after[path] != digest
    }
    missing = sorted(path for path in stable if path not in restored)
    different = {
        path: (digest, restored[path])
        for path, digest in stable.items()
        if path in restored and restored[path] != digest
    }
    compared = {path: digest for path, digest in stable.items() if restored.get(path) == digest}
    extra = sorted(set(restored) - set(before) - set(after))
    return Comparison(compared, changed, missing, different, extra)


def local_json(host: Host, url: str, *, data: dict[str, str] | None = None) -> Any:
    """GET (or form POST) ``url`` on the host's loopback with curl; the parsed JSON answer."""
    form = " ".join(f"--data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in (data or {}).items())
    return json.loads(host.run(f"curl -fsS {form} {shlex.quote(url)}").stdout)
