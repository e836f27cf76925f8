"""Fact parsers as data: command output in, value out, no host."""

from __future__ import annotations

import pytest

from apply.facts import (
    AptListsAge,
    CommandSucceeds,
    DebPackages,
    FileInfo,
    FileSha256,
    FileStat,
    OsRelease,
    ServiceState,
    ServiceStatus,
    Sysctl,
    Which,
    normalize_sysctl,
)

SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_deb_packages_keeps_only_installed() -> None:
    output = "curl\t7.88.1-10\tii \njq\t1.6-2.1\trc \nlibc6\t2.36-9\tii \nbroken-line\n"
    assert DebPackages().parse(output) == {"curl": "7.88.1-10", "libc6": "2.36-9"}


def test_deb_packages_empty() -> None:
    assert DebPackages().parse("") == {}


@pytest.mark.parametrize(
    "output, expected",
    [
        ("now=1000\nnewest=400.5\n", 599.5),
        ("now=1000\nnewest=\n", None),
        # A clock behind the lists' mtime is not a negative age.
        ("now=1000\nnewest=1200.0\n", 0.0),
    ],
)
def test_apt_lists_age(output: str, expected: float | None) -> None:
    assert AptListsAge().parse(output) == expected


def test_apt_lists_age_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="now="):
        AptListsAge().parse("oops")


@pytest.mark.parametrize(
    "output, expected",
    [
        ("", None),
        ("regular file|root|root|644|12\n", FileStat("file", "root", "root", "0644", 12)),
        ("regular empty file|root|adm|640|0\n", FileStat("file", "root", "adm", "0640", 0)),
        ("directory|www-data|adm|2775|4096\n", FileStat("directory", "www-data", "adm", "2775", 4096)),
        ("symbolic link|root|root|777|7\n", FileStat("link", "root", "root", "0777", 7)),
        ("socket|root|root|755|0\n", FileStat("other", "root", "root", "0755", 0)),
    ],
)
def test_file_info(output: str, expected: FileStat | None) -> None:
    assert FileInfo("/x").parse(output) == expected


def test_file_info_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="unexpected stat output"):
        FileInfo("/x").parse("what")


def test_file_info_command_quotes_path() -> None:
    command = FileInfo("/tmp/a b;rm -rf /").command
    assert "'/tmp/a b;rm -rf /'" in command
    assert "-- '/tmp/a b;rm -rf /'" in command


def test_file_sha256() -> None:
    assert FileSha256("/x").parse(f"{SHA}  /x\n") == SHA
    # sha256sum escapes names with backslashes and prefixes the line with one.
    assert FileSha256("/x").parse(f"\\{SHA}  /a\\\\b\n") == SHA
    assert FileSha256("/x").parse("") is None
    with pytest.raises(ValueError):
        FileSha256("/x").parse("nothex  /x")


def test_which_and_command_succeeds() -> None:
    assert Which("nft").parse("/usr/sbin/nft\n") == "/usr/sbin/nft"
    assert Which("nft").parse("") is None
    assert CommandSucceeds("true").parse("yes\n") is True
    assert CommandSucceeds("true").parse("no\n") is False
    with pytest.raises(ValueError):
        CommandSucceeds("true").parse("")


def test_service_state() -> None:
    output = "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n"
    status = ServiceState("ssh").parse(output)
    assert status == ServiceStatus("loaded", "active", "enabled", False)
    assert status.exists and status.enabled and status.running


def test_service_state_missing_unit() -> None:
    output = "LoadState=not-found\nActiveState=inactive\nUnitFileState=\nNeedDaemonReload=no\n"
    status = ServiceState("nope").parse(output)
    assert not status.exists and not status.enabled and not status.running


def test_service_state_static_counts_as_enabled_and_reload_flag() -> None:
    output = "LoadState=loaded\nActiveState=failed\nUnitFileState=static\nNeedDaemonReload=yes\n"
    status = ServiceState("x").parse(output)
    assert status.enabled and not status.running and status.need_daemon_reload


def test_service_state_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="LoadState"):
        ServiceState("x").parse("Failed to connect to bus")


def test_sysctl() -> None:
    assert Sysctl("net.ipv4.ip_forward").parse("present\n1\n") == "1"
    assert Sysctl("net.ipv4.tcp_rmem").parse("present\n4096\t131072\t6291456\n") == "4096 131072 6291456"
    assert Sysctl("net.nope").parse("") is None
    assert "/proc/sys/net/ipv4/ip_forward" in Sysctl("net.ipv4.ip_forward").command


def test_sysctl_rejects_bad_key() -> None:
    with pytest.raises(ValueError, match="dotted name"):
        Sysctl("net.ipv4.ip_forward; reboot")


def test_normalize_sysctl() -> None:
    assert normalize_sysctl(" 4096  131072\t6291456 ") == "4096 131072 6291456"


def test_os_release() -> None:
    output = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n# comment\n'
    assert OsRelease().parse(output) == {
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
        "ID": "debian",
        "VERSION_ID": "12",
    }


def test_facts_are_hashable_cache_keys() -> None:
    assert FileInfo("/a") == FileInfo("/a")
    assert len({FileInfo("/a"), FileInfo("/a"), FileInfo("/b"), Sysctl("net.x")}) == 3
