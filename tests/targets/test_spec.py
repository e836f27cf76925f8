from pathlib import Path

import pytest

from targets import Target, TargetError
from targets.spec import ScratchSpec, SSHSpec, parse_target


def parse(text: str, ssh_config: Path | None = None) -> ScratchSpec | SSHSpec:
    return parse_target(text, default_scratch="hvs-scratch", ssh_config=ssh_config or Path("/nonexistent"))


def test_scratch_default_and_named() -> None:
    assert parse("scratch") == ScratchSpec("hvs-scratch")
    assert parse("scratch:node-2") == ScratchSpec("node-2")


@pytest.mark.parametrize("text", ["scratch:", "scratch:Upper", "scratch:a", "scratch:x_y"])
def test_bad_scratch_name(text: str) -> None:
    with pytest.raises(TargetError, match="scratch server name"):
        parse(text)


def test_ssh_url_full() -> None:
    assert parse("ssh://admin@203.0.113.10:2222") == SSHSpec("203.0.113.10", "admin", 2222, None)


def test_ssh_url_defaults_user_and_port() -> None:
    spec = parse_target("ssh://example.org", default_scratch="s", default_user="ops", default_port=2200)
    assert spec == SSHSpec("example.org", "ops", 2200, None)


def test_ssh_url_ipv6() -> None:
    assert parse("ssh://root@[2001:db8::1]:22") == SSHSpec("2001:db8::1", "root", 22, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ssh://root@host:70000", "port"),
        ("ssh://root@host:abc", "port"),
        ("http://host", "scheme 'http'"),
        ("ssh://root:secret@host", "passwords are not accepted"),
        ("ssh://root@host/path", "unexpected path"),
        ("ssh://", "names no host"),
        ("", "empty"),
        ("not a host!", "neither a URL nor an ssh alias"),
    ],
)
def test_bad_target(text: str, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        parse(text)


def test_alias_from_ssh_config(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host hetzner1\n"
        "    HostName 203.0.113.10\n"
        "    User admin\n"
        "    Port 2222\n"
        "    IdentityFile ~/.ssh/hetzner1_ed25519\n"
        "Host *\n"
        "    User fallback\n"
    )
    spec = parse("hetzner1", ssh_config=config)
    assert spec == SSHSpec(
        "203.0.113.10", "admin", 2222, Path("~/.ssh/hetzner1_ed25519").expanduser(), alias="hetzner1"
    )


def test_alias_missing_from_config_is_a_host_name(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host other\n    HostName 192.0.2.1\n")
    assert parse("db1.example.org", ssh_config=config) == SSHSpec("db1.example.org", "root", 22, None)


def test_alias_bad_port_in_config(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host h1\n    Port twenty\n")
    with pytest.raises(TargetError, match="Port 'twenty'"):
        parse("h1", ssh_config=config)


def test_target_json_round_trip() -> None:
    target = Target(
        "n", "10.0.0.2", 22, "root", Path("/k"), ("primary", "probe"), "scratch", ("/kh",), os="Debian"
    )
    assert Target.from_json(target.to_json()) == target
    assert target.url == "ssh://root@10.0.0.2:22"
    assert Target("n", "::1", 2222, "root", Path("/k"), (), "ssh").url == "ssh://root@[::1]:2222"
    assert target.endpoint.trust.files == (Path("/kh"),)
