"""The central journal on the logs host, read from the controller (Team Charlie-2): a marker
line written on each host, and the hosts whose marker arrived."""

from __future__ import annotations

import json
import shlex

from apply.runner import Host


def write_marker(host: Host, identifier: str, message: str) -> None:
    """One line in ``host``'s journal under ``identifier`` (systemd-cat: the journal's own
    client, as any unit's output gets there)."""
    host.run(f"systemd-cat -t {shlex.quote(identifier)} -p info echo {shlex.quote(message)}")


def hostnames_with(logs: Host, directory: str, identifier: str, text: str) -> dict[str, str]:
    """{_HOSTNAME: MESSAGE} of the entries under ``identifier`` in the journal files of
    ``directory`` on the logs host whose message contains ``text``."""
    listed = logs.run(
        f"journalctl --directory={shlex.quote(directory)} --no-pager -o json "
        f"SYSLOG_IDENTIFIER={shlex.quote(identifier)}",
        check=False,
    )
    found = {}
    for line in listed.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, str) and text in message:
            found[str(entry.get("_HOSTNAME", ""))] = message
    return found
