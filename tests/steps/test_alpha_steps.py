"""Alpha's step logic as data: facts in, commands out, no SSH."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from apply import guard
from apply.facts import FileInfo, OsRelease, Session, SSHSession
from apply.poll import eventually
from apply.runner import ApplyError, ConnectionLost, Host, Mode
from apply.testing import FakeConnection, fake_context, fake_host
from checks import probes
from settings.base import PortRule, ProtocolRule
from settings.loader import load_settings
from settings.model import Settings
from steps.alpha import baseline, fail2ban, firewall, hardening, sshd, tls
from steps.alpha.settings import SSHHardening, TLSSettings
from steps.base import flintlock

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# -- firewall ---------------------------------------------------------------------------------


def _settings(**changes) -> Settings:
    """The embedded default config (its declared ports and admins) with ``changes``."""
    return load_settings(None, changes)


def test_rules_come_only_from_declared_ports() -> None:
    settings = _settings(
        ports=[
            PortRule(name="ssh", team="Alpha", port=22, sources=["world"]),
            PortRule(name="api", team="Base", port=9090, sources=["admin", "2001:db8::/32"]),
        ]
    )
    rules = firewall.port_rules(settings, ["10.0.0.0/8"])
    assert rules == [
        'tcp dport 22 accept comment "ssh (Alpha)"',
        'ip saddr { 10.0.0.0/8 } tcp dport 9090 accept comment "api (Base)"',
        'ip6 saddr { 2001:db8::/32 } tcp dport 9090 accept comment "api (Base)"',
    ]


def test_admin_port_without_admin_sources_is_a_clear_error() -> None:
    with pytest.raises(ApplyError, match=r"firewall.admin_sources is empty"):
        firewall.port_rules(_settings(), [])


def test_allowed_ports_by_source_address() -> None:
    settings = _settings()
    admins = ["10.231.0.0/24"]
    assert 22 in firewall.allowed_ports(settings, admins, "198.51.100.7")
    assert 9090 not in firewall.allowed_ports(settings, admins, "198.51.100.7")
    assert 9090 in firewall.allowed_ports(settings, admins, "10.231.0.1")


def test_rendered_ruleset_is_default_deny_with_a_stable_digest() -> None:
    settings = _settings()
    text = firewall.render(settings, ["10.231.0.0/24"])
    assert "policy drop;" in text and "flush ruleset" not in text
    assert firewall.digest_of(text) == firewall.digest_of(firewall.render(settings, ["10.231.0.0/24"]))
    assert firewall.digest_of(text) != firewall.digest_of(firewall.render(settings, ["10.0.0.0/8"]))


@pytest.mark.skipif(not Path("/usr/sbin/nft").exists(), reason="nft is not installed on this controller")
def test_rendered_ruleset_passes_nft_check(tmp_path: Path) -> None:
    path = tmp_path / "rules.nft"
    path.write_text(firewall.render(_settings(), ["10.231.0.0/24", "2001:db8::/32"]))
    result = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def _with_vrrp() -> Settings:
    # A port open to one role only, and VRRP between the control-plane hosts.
    return _settings(
        ports=[
            *_settings().ports,
            PortRule(name="example-peer", team="Foxtrot", port=7946, sources=["role:control-plane"]),
        ],
        protocols=[
            ProtocolRule(name="vrrp", team="Foxtrot", protocol="vrrp", sources=["role:control-plane"])
        ],
    )


def test_role_sources_are_the_addresses_of_the_hosts_holding_the_role() -> None:
    peers = {"control-plane": ("10.231.0.11", "10.231.0.12"), "primary": ("10.231.0.2",)}
    settings = _with_vrrp()
    assert (
        'ip saddr { 10.231.0.11/32, 10.231.0.12/32 } tcp dport 7946 accept comment "example-peer (Foxtrot)"'
        in (firewall.port_rules(settings, ["10.231.0.0/24"], peers))
    )
    assert firewall.protocol_rules(settings, [], peers) == [
        'ip saddr { 10.231.0.11/32, 10.231.0.12/32 } meta l4proto vrrp accept comment "vrrp (Foxtrot)"'
    ]
    assert 7946 in firewall.allowed_ports(settings, ["10.231.0.0/24"], "10.231.0.12", peers=peers)
    assert 7946 not in firewall.allowed_ports(settings, ["10.231.0.0/24"], "10.231.0.2", peers=peers)
    # No host holds the role yet: the rule admits nobody.
    assert firewall.protocol_rules(settings, [], {}) == []


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"sources": ["role:nobody"]}, "names no role"),
        ({"protocol": "tcp"}, "declared by port"),
        ({"sources": []}, "at least 1"),
    ],
)
def test_a_declared_protocol_is_checked_when_the_config_loads(rule: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ProtocolRule(**{"name": "vrrp", "team": "Foxtrot", "protocol": "vrrp", "sources": ["admin"], **rule})


def test_no_declared_protocol_leaves_the_ruleset_as_it_was() -> None:
    text = firewall.render(_settings(), ["10.231.0.0/24"])
    assert "Declared protocols" not in text
    assert not re.search(r"l4proto \w+ accept", text)


@pytest.mark.skipif(not Path("/usr/sbin/nft").exists(), reason="nft is not installed on this controller")
def test_a_ruleset_with_protocols_and_role_sources_passes_nft_check(tmp_path: Path) -> None:
    path = tmp_path / "rules.nft"
    peers = {"control-plane": ("10.231.0.11", "2001:db8::11")}
    path.write_text(firewall.render(_with_vrrp(), ["10.231.0.0/24"], peers))
    result = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "ip6 saddr { 2001:db8::11/128 } meta l4proto vrrp accept" in path.read_text()


def _converged_firewall(rules_mode: str = "644") -> tuple[list, FakeConnection]:
    """firewall.apply on a host whose files and live table already match, with the rules
    file's mode ``rules_mode``."""
    settings = _settings()
    rules = firewall.render(settings, settings.firewall.admin_sources)
    conn = FakeConnection(
        {
            SSHSession().command: (0, "10.231.0.1 50000 10.231.0.5 22\n", ""),
            firewall.LiveTableDigest().command: (
                0,
                f'table inet hvsuite_filter {{\n\tcomment "hvsuite {firewall.digest_of(rules)}"\n',
                "",
            ),
            re.compile(r".*dpkg-query.*"): (0, "nftables\t1.0.6\tii \nnetbase\t6.4\tii \n", ""),
            re.compile(r"systemctl show .*nftables.*"): (
                0,
                "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n",
                "",
            ),
        },
        files={firewall.RULES_FILE: rules.encode(), firewall.MAIN_CONFIG: firewall.render_main().encode()},
    )
    conn.set_fact(FileInfo(firewall.RULES_FILE), f"regular file|root|root|{rules_mode}|1\n")
    conn.set_fact(FileInfo(firewall.MAIN_CONFIG), "regular file|root|root|755|1\n")
    host = fake_host(conn)
    host.fresh = lambda: host  # type: ignore[method-assign]
    return list(firewall.apply(fake_context(host, _settings())).ops), conn


def test_firewall_unchanged_when_files_and_live_table_match() -> None:
    results, _ = _converged_firewall()
    assert [r.op for r in results if r.changed] == []


def test_firewall_file_with_a_drifted_mode_is_corrected_without_reloading_the_ruleset() -> None:
    results, conn = _converged_firewall(rules_mode="666")
    changed = [r for r in results if r.changed]
    assert [r.commands for r in changed] == [[f"chmod 0644 -- {firewall.RULES_FILE}"]]
    assert f"nft -f {firewall.RULES_FILE}" not in conn.commands


def test_firewall_refuses_rules_that_would_lock_out_the_controller() -> None:
    settings = _settings(ports=[PortRule(name="ssh", team="Alpha", port=22, sources=["192.0.2.0/24"])])
    conn = FakeConnection(
        {
            SSHSession().command: (0, "10.231.0.1 50000 10.231.0.5 22\n", ""),
            re.compile(r".*dpkg-query.*"): (0, "nftables\t1.0.6\tii \nnetbase\t6.4\tii \n", ""),
        }
    )
    with pytest.raises(ApplyError, match="would not let the controller"):
        firewall.apply(fake_context(fake_host(conn), settings))


def test_a_changed_ruleset_is_validated_loaded_under_guard_and_proven() -> None:
    settings = _settings()
    conn = FakeConnection(
        {
            SSHSession().command: (0, "10.231.0.1 50000 10.231.0.5 22\n", ""),
            re.compile(r".*dpkg-query.*"): (0, "nftables\t1.0.6\tii \nnetbase\t6.4\tii \n", ""),
            re.compile(r"systemctl show .*nftables.*"): (
                0,
                "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n",
                "",
            ),
        }
    )
    host = fake_host(conn)
    firewall.apply(fake_context(host, settings))
    commands = conn.commands
    validate = [c for c in commands if c.startswith("nft -c -f")]
    assert validate, "the candidate ruleset was not validated"
    arm = next(i for i, c in enumerate(commands) if "systemd-run" in c)
    load = commands.index(f"nft -f {firewall.RULES_FILE}")
    disarm = commands.index(guard.disarm_command(guard.Guard("firewall", files=(), restore=())))
    assert arm < load < disarm


def test_failed_login_proof_rolls_the_change_back() -> None:
    conn = FakeConnection()
    host = fake_host(conn)

    def refuse() -> None:
        raise ApplyError("login refused")

    host.fresh = lambda: refuse()  # type: ignore[method-assign]
    g = guard.Guard("sshd", files=("/etc/x.conf",), restore=("systemctl reload ssh",), seconds=60)
    with pytest.raises(ApplyError, match="rollback"):
        guard.guarded_change(host, "op", ["touch /etc/x.conf"], g)
    assert f"/bin/sh {g.script}" in conn.commands, "the restore script did not run"
    assert "systemctl reload ssh || status=1" in guard.restore_script(g)


class _Clock:
    """A stand-in for the time module: sleeping advances it at once."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_drop_during_a_lock_out_waits_for_the_hosts_own_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    # The change locks everyone out and the connection drops: the restore cannot be run over
    # SSH, so the rollback waits for the host's timer to restore the files, then proves access.
    monkeypatch.setattr(guard, "time", _Clock())
    conn = FakeConnection()
    conn.drop_on(re.compile(r"/bin/sh /run/hvsuite/rollback/sshd/restore\.sh"))
    # The change's own proof fails 6 times, then the first wait; the switch fires after that.
    logins = iter([False] * 7 + [True])

    def fresh() -> Host:
        if not next(logins):
            raise ApplyError("Authentication failed.")
        return host

    host = fake_host(conn)
    host.fresh = fresh  # type: ignore[method-assign]
    g = guard.Guard("sshd", files=("/etc/x.conf",), restore=("systemctl reload ssh",), seconds=30)
    with pytest.raises(ApplyError, match="so it was rolled back and access proven again"):
        guard.guarded_change(host, "op", ["touch /etc/x.conf"], g)
    assert next(logins, None) is None, "access was not proven after the switch fired"


def test_a_drop_before_the_switch_is_armed_restores_nothing() -> None:
    # Cut off during the backup: the change never started, so no (possibly stale) restore
    # script may run; the step is simply run again.
    conn = FakeConnection({re.compile(r"systemctl is-active --quiet -- .*\.timer"): (3, "", "")})
    conn.drop_on(re.compile(r"rm -rf -- /run/hvsuite/rollback/sshd && .*"))
    host = fake_host(conn, reconnects=[])
    g = guard.Guard("sshd", files=("/etc/x.conf",), restore=(), seconds=30)
    with pytest.raises(ConnectionLost):
        guard.guarded_change(host, "op", ["touch /etc/x.conf"], g)
    assert not any("restore.sh" in command for command in host.connection.commands)


def test_disarming_twice_is_not_an_error() -> None:
    g = guard.Guard("sshd", files=(), restore=())
    command = guard.disarm_command(g)

    # The switch's timer is gone (--collect) after the first stop: the second run succeeds.
    def run(systemctl: str) -> int:
        # Stand-ins for systemctl ("false": not active) and for rm, so nothing real is touched.
        shell = command.replace("systemctl", systemctl).replace("rm -rf", "echo")
        return subprocess.run(["sh", "-c", shell], capture_output=True, check=False).returncode

    assert run("false") == 0
    assert run("true") != 0


def test_no_login_after_the_switch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "time", _Clock())
    conn = FakeConnection()
    conn.drop_on(re.compile(r"/bin/sh .*restore\.sh"))
    host = fake_host(conn)

    def refuse() -> Host:
        raise ApplyError("Authentication failed.")

    host.fresh = refuse  # type: ignore[method-assign]
    g = guard.Guard("sshd", files=("/etc/x.conf",), restore=(), seconds=30)
    with pytest.raises(ApplyError, match=r"no new login came back within 60 s.*use the console"):
        guard.guarded_change(host, "op", ["touch /etc/x.conf"], g)


# -- sshd -------------------------------------------------------------------------------------


def test_dropin_is_key_only_with_modern_crypto() -> None:
    ssh = SSHHardening()
    text = sshd.render(ssh)
    for line in (
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "AuthenticationMethods publickey",
        f"KexAlgorithms {','.join(ssh.kex)}",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        f"MaxAuthTries {ssh.max_auth_tries}",
    ):
        assert line in text.splitlines(), line
    assert "ecdsa" not in text


DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
UBUNTU_24_04 = 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n'
SFTP = "/usr/lib/openssh/sftp-server"
SSH_OP = f"sshd config {sshd.SSHD_CONFIG}, {sshd.DROPIN}"
# A validation, as the runner fills it in: the candidate is a temp file beside the target.
VALIDATION = re.compile(r"mkdir -p -m 0700 /run/hvsuite && d=\$\(mktemp -d .*sshd -t -f .*")


def _main(port: int = 22, sftp: str = SFTP) -> str:
    return sshd.render_main(sshd.MainConfig(sshd.DISTRIBUTIONS[("debian", "12")], port, sftp))


def _sshd_conn(
    files: dict[str, bytes] | None = None,
    *,
    os_release: str = DEBIAN_12,
    sftp: str = SFTP + "\n",
    modes: dict[str, str] | None = None,
) -> FakeConnection:
    """A Debian 12 host reached on port 22, with ``files`` (root:root, ``modes`` or 0644) and
    every allowed host key and no weak moduli, so only the config files can differ."""
    conn = FakeConnection(files=files)
    conn.set_fact(OsRelease(), os_release)
    conn.set_fact(SSHSession(), "10.231.0.1 50000 10.231.0.5 22\n")
    conn.set_fact(sshd.SftpServer(), sftp)
    conn.set_fact(sshd.HostKeyFiles(), "ssh_host_ed25519_key\nssh_host_rsa_key\n")
    conn.set_fact(sshd.WeakModuli(), "0\n")
    for path, data in (files or {}).items():
        mode = (modes or {}).get(path, "644")
        conn.set_fact(FileInfo(path), f"regular file|root|root|{mode}|{len(data)}\n")
    return conn


def _sshd_host(conn: FakeConnection, mode: Mode = "apply") -> Host:
    host = fake_host(conn, mode=mode)
    host.fresh = lambda: host  # type: ignore[method-assign]
    return host


def _desired() -> dict[str, bytes]:
    """The converged files of the "SSH hardening" step: both configs and the banner files."""
    banner = baseline.banner_text(load_settings()).encode()
    return {
        sshd.SSHD_CONFIG: _main().encode(),
        sshd.DROPIN: sshd.render(SSHHardening()).encode(),
        **dict.fromkeys(baseline.ISSUE_FILES, banner),
    }


def _swap(conn: FakeConnection, path: str) -> int:
    """Index of the command that moved a validated temp file to ``path``."""
    return next(
        i for i, c in enumerate(conn.commands) if c.startswith("mv -f -- ") and c.endswith(f" {path}")
    )


def test_main_config_includes_the_drop_ins_first_and_keeps_the_distribution_defaults() -> None:
    lines = _main(port=2222).splitlines()
    assert lines[0] == "Include /etc/ssh/sshd_config.d/*.conf"
    settings = [line for line in lines if line and not line.startswith("#")]
    assert settings == [
        "Include /etc/ssh/sshd_config.d/*.conf",
        "Port 2222",
        "UsePAM yes",
        "PrintMotd no",
        "AcceptEnv LANG LC_*",
        f"Subsystem sftp {SFTP}",
    ]


@pytest.mark.parametrize(
    ("os_release", "sftp", "subsystem", "socket"),
    [
        (DEBIAN_12, SFTP + "\n", f"Subsystem sftp {SFTP}", False),
        (UBUNTU_24_04, SFTP + "\n", f"Subsystem sftp {SFTP}", True),
        (
            DEBIAN_12,
            "/usr/libexec/openssh/sftp-server\n",
            "Subsystem sftp /usr/libexec/openssh/sftp-server",
            False,
        ),
        (DEBIAN_12, "", "Subsystem sftp internal-sftp", False),
    ],
)
def test_main_config_follows_the_os_and_the_sftp_server_present(
    os_release: str, sftp: str, subsystem: str, socket: bool
) -> None:
    conn = _sshd_conn(os_release=os_release, sftp=sftp)
    text = sshd.render_main(sshd.main_config(fake_host(conn)))
    assert subsystem in text.splitlines()
    # Ubuntu 24.04 listens through ssh.socket: the file says how a port change takes effect.
    assert ("systemctl restart ssh.socket" in text) is socket


def test_main_config_for_an_unknown_distribution_is_refused_by_name() -> None:
    conn = _sshd_conn(os_release='PRETTY_NAME="Fedora Linux 40"\nID=fedora\nVERSION_ID=40\n')
    with pytest.raises(
        ApplyError, match=r"Fedora Linux 40: the suite renders /etc/ssh/sshd_config for Debian 12"
    ):
        sshd.apply(fake_context(_sshd_host(conn)))


def test_drifted_main_config_is_validated_then_swapped_under_the_guard_and_counted() -> None:
    desired = _desired()
    drifted = desired[sshd.SSHD_CONFIG] + b"ThisIsNotAnOption yes\n"
    conn = _sshd_conn({**desired, sshd.SSHD_CONFIG: drifted})
    results = sshd.apply(fake_context(_sshd_host(conn))).ops

    changed = [r for r in results if r.changed]
    assert [r.op for r in changed] == [SSH_OP]
    assert changed[0].diff is not None and "\n-ThisIsNotAnOption yes\n" in changed[0].diff
    assert f"--- a{sshd.SSHD_CONFIG}" in changed[0].diff and sshd.DROPIN not in changed[0].diff
    assert conn.files[sshd.SSHD_CONFIG] == desired[sshd.SSHD_CONFIG]
    assert conn.files[sshd.DROPIN] == desired[sshd.DROPIN]

    commands = conn.commands
    g = sshd.config_guard()
    backups = [i for i, c in enumerate(commands) if c.startswith("if [ -e ") and "cp -a --" in c]
    assert [commands[i].split()[3] for i in backups] == [sshd.SSHD_CONFIG, sshd.DROPIN]
    arm = next(i for i, c in enumerate(commands) if "systemd-run" in c)
    validations = [i for i, c in enumerate(commands) if VALIDATION.fullmatch(c)]
    assert len(validations) == 1, "only the main config is rewritten"
    validate = commands[validations[0]]
    # The candidate (a temp file beside sshd_config) with the live drop-in, not the live main config.
    assert re.search(r"sed .* /etc/ssh/\.sshd_config\.hvs-tmp\d+ > ", validate)
    assert f'cp -- {sshd.DROPIN} "$d/00-hvsuite-hardening.conf"' in validate
    swap = _swap(conn, sshd.SSHD_CONFIG)
    check = commands.index("sshd -t")
    reload = commands.index(sshd.RELOAD)
    disarm = commands.index(guard.disarm_command(g))
    assert max(backups) < arm < validations[0] < swap < check < reload < disarm
    assert not any(c.endswith(f" {sshd.DROPIN}") and c.startswith("mv ") for c in commands)


def test_main_config_and_drop_in_both_broken_are_repaired_in_one_validated_change() -> None:
    desired = _desired()
    conn = _sshd_conn({sshd.SSHD_CONFIG: b"ThisIsNotAnOption yes\n", sshd.DROPIN: b"AnotherBogus yes\n"})
    result = sshd.install_config(_sshd_host(conn), SSHHardening(), desired[sshd.DROPIN].decode())
    assert result.changed and conn.files[sshd.SSHD_CONFIG] == desired[sshd.SSHD_CONFIG]
    assert conn.files[sshd.DROPIN] == desired[sshd.DROPIN]
    commands = conn.commands
    staged = _swap(conn, sshd.STAGED_DROPIN)
    main_check, dropin_check = [i for i, c in enumerate(commands) if VALIDATION.fullmatch(c)]
    # The main config is checked against the drop-in it will read (staged), never the broken live one.
    assert f'cp -- {sshd.STAGED_DROPIN} "$d/' in commands[main_check]
    # The drop-in is checked against the repaired main config.
    assert f'#Include $d/*.conf#" {sshd.SSHD_CONFIG} > ' in commands[dropin_check]
    assert staged < main_check < _swap(conn, sshd.SSHD_CONFIG) < dropin_check < _swap(conn, sshd.DROPIN)
    assert sshd.STAGED_DROPIN not in conn.files
    assert commands.index(sshd.RELOAD) > _swap(conn, sshd.DROPIN)


def test_main_config_and_drop_in_as_desired_change_nothing() -> None:
    conn = _sshd_conn(_desired())
    results = sshd.apply(fake_context(_sshd_host(conn))).ops
    assert [r.op for r in results if r.changed] == []
    assert not any(c.startswith(("mktemp", "mv ", "systemd-run", "systemctl")) for c in conn.commands)


def test_only_owner_or_mode_drifted_is_corrected_without_a_reload() -> None:
    conn = _sshd_conn(_desired(), modes={sshd.SSHD_CONFIG: "666"})
    result = sshd.install_config(_sshd_host(conn), SSHHardening(), sshd.render(SSHHardening()))
    assert result.changed and result.commands == [f"chmod 0644 -- {sshd.SSHD_CONFIG}"]
    assert sshd.RELOAD not in conn.commands


def test_check_mode_records_the_main_config_repair_without_running_it() -> None:
    desired = _desired()
    drifted = {**desired, sshd.SSHD_CONFIG: desired[sshd.SSHD_CONFIG] + b"ThisIsNotAnOption yes\n"}
    conn = _sshd_conn(drifted)
    results = sshd.apply(fake_context(_sshd_host(conn, mode="check"))).ops
    changed = [r for r in results if r.changed]
    assert [r.op for r in changed] == [SSH_OP] and changed[0].reason == "would change (check mode)"
    assert changed[0].diff and "-ThisIsNotAnOption yes" in changed[0].diff
    assert any(c.startswith(f"put {sshd.SSHD_CONFIG} ") for c in changed[0].commands)
    assert conn.files == drifted and conn.uploads == []
    assert not any(c.startswith(("mktemp", "mv ", "systemd-run", "systemctl", "sshd")) for c in conn.commands)


def test_sshd_validates_the_candidate_before_it_is_installed() -> None:
    conn = _sshd_conn({sshd.SSHD_CONFIG: _main().encode()})
    conn.respond(VALIDATION, (255, "", "line 1: Bad configuration option: Bogus"))
    with pytest.raises(ApplyError, match="rejected"):
        sshd.install_config(_sshd_host(conn), SSHHardening(), "Bogus yes\n")
    assert sshd.DROPIN not in conn.files, "a rejected drop-in reached its live path"
    g = sshd.config_guard()
    assert f"/bin/sh {g.script}" in conn.commands, "the guard's restore did not run"
    assert "sshd -t" not in conn.commands


def test_effective_config_mismatches_are_named() -> None:
    ssh = SSHHardening()
    ok = "\n".join(f"{k} {v[0]}" for k, v in sshd.expected_effective(ssh).items())
    assert sshd.effective_mismatches(sshd.parse_effective(ok), ssh) == []
    bad = ok.replace("passwordauthentication no", "passwordauthentication yes")
    assert sshd.effective_mismatches(sshd.parse_effective(bad), ssh) == [
        "passwordauthentication is 'yes', expected 'no'"
    ]


def test_a_rollback_drill_returns_the_refusal_and_fails_when_the_drop_in_is_kept() -> None:
    conn = _sshd_conn({sshd.SSHD_CONFIG: _main().encode()})
    conn.respond(VALIDATION, (255, "", "Bad configuration option"))
    assert "rejected" in sshd.refused_install(_sshd_host(conn), SSHHardening(), "Bogus yes\n")
    accepted = _sshd_conn({sshd.SSHD_CONFIG: _main().encode()})
    with pytest.raises(AssertionError, match="kept the drill's drop-in"):
        sshd.refused_install(_sshd_host(accepted), SSHHardening(), "MaxAuthTries 3\n")


def test_host_key_algorithms_offered_follow_the_allowed_key_types() -> None:
    def offered(types: list[str]) -> list[str]:
        text = sshd.render(SSHHardening(host_key_types=types))  # type: ignore[arg-type]
        line = next(line for line in text.splitlines() if line.startswith("HostKeyAlgorithms "))
        return line.split(" ", 1)[1].split(",")

    assert offered(["ed25519"]) == ["ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com"]
    default = offered(["ed25519", "rsa"])
    # ed25519 first (the preference follows the setting's order); RSA keys sign with SHA-2
    # only, never the SHA-1 "ssh-rsa"; no ECDSA unless allowed.
    assert default[:2] == ["ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com"]
    assert {"rsa-sha2-512", "rsa-sha2-256"} <= set(default) and "ssh-rsa" not in default
    assert not any("ecdsa" in alg for alg in default)
    assert any(alg.startswith("ecdsa-sha2-") for alg in offered(["ed25519", "ecdsa"]))
    assert sshd.disallowed_host_key_types(SSHHardening(host_key_types=["ed25519"])) == ["dsa", "ecdsa", "rsa"]
    assert sshd.EffectiveConfig().parse("PasswordAuthentication no\n") == {"passwordauthentication": "no"}


def test_weak_host_keys_are_removed_and_missing_allowed_ones_generated() -> None:
    conn = FakeConnection({sshd.HostKeyFiles().command: (0, "ssh_host_ecdsa_key\nssh_host_rsa_key\n", "")})
    host = fake_host(conn)
    sshd.host_keys(host, SSHHardening())
    sshd.weak_host_keys(host, SSHHardening())
    assert any("ssh-keygen -q -t ed25519" in c for c in conn.commands)
    assert any("rm -f -- /etc/ssh/ssh_host_ecdsa_key" in c for c in conn.commands)


def test_kexinit_parser() -> None:
    def name_list(names: list[str]) -> bytes:
        data = ",".join(names).encode()
        return len(data).to_bytes(4, "big") + data

    lists = [["curve25519-sha256", "ext-info-s"], ["ssh-ed25519"], ["aes256-ctr"], ["aes256-ctr"]]
    lists += [["hmac-sha2-256-etm@openssh.com"]] * 2 + [["none"]] * 2 + [[]] * 2
    payload = bytes([20]) + bytes(16) + b"".join(name_list(n) for n in lists) + bytes(5)
    parsed = probes.parse_kexinit("SSH-2.0-OpenSSH_9.2", payload)
    assert parsed.kex == ("curve25519-sha256",)
    assert parsed.host_key == ("ssh-ed25519",)


def test_port_scan_is_bounded() -> None:
    with pytest.raises(ValueError, match="exceeds the bound"):
        probes.scan_ports("127.0.0.1", range(1, 5000))
    assert len(probes.scan_plan([9090])) < probes.MAX_SCAN_PORTS


class _LocalHost:
    """Runs a command here, the way a runner Host runs it on another host (sh, stdin)."""

    def run(self, command: str, *, stdin: str, timeout: float) -> Any:
        return subprocess.run(
            ["sh", "-c", command], input=stdin, capture_output=True, text=True, timeout=timeout
        )


@pytest.mark.parametrize("via", [None, _LocalHost()], ids=["from-the-controller", "from-another-host"])
def test_port_scan_tells_open_from_refused_on_loopback(via: Any) -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            closed = other.getsockname()[1]
        result = probes.scan_ports("127.0.0.1", [port, closed], timeout=1.0, via=via)
    assert result.open == {port} and result.refused == {closed} and result.scanned == 2


@dataclass(frozen=True)
class _Ran:
    rc: int
    stdout: str
    stderr: str


_RAN_OK = _Ran(0, "", "")


class _FakeTestinfraHost:
    """What the check helpers use of a testinfra host: ``run`` answers ``ran``, and
    ``check_output`` the ``ss`` outputs in turn (the last one repeats)."""

    def __init__(self, ss_outputs: list[str], ran: _Ran = _RAN_OK) -> None:
        self.ss_outputs, self.ran, self.commands = ss_outputs, ran, []

    def run(self, command: str) -> _Ran:
        self.commands.append(command)
        return self.ran

    def run_expect(self, codes: list[int], command: str) -> None:
        self.commands.append(command)

    def check_output(self, command: str) -> str:
        self.commands.append(command)
        return self.ss_outputs.pop(0) if len(self.ss_outputs) > 1 else self.ss_outputs[0]


def test_read_fact_parses_fresh_output_and_fails_on_a_bad_exit() -> None:
    session = _FakeTestinfraHost([], _Ran(0, "10.0.0.9 5000 10.0.0.5 22\n", ""))
    assert probes.read_fact(session, SSHSession()) == Session("10.0.0.9", "10.0.0.5", 22)
    broken = _FakeTestinfraHost([], _Ran(1, "", "no ss"))
    with pytest.raises(AssertionError, match="exited 1: no ss"):
        probes.read_fact(broken, hardening.Listeners())


def test_temporary_listener_waits_for_the_port_and_always_stops() -> None:
    host = _FakeTestinfraHost(["", "LISTEN 0 5 0.0.0.0:18737 0.0.0.0:*\n"])
    with probes.temporary_listener(host, 18737) as port:
        assert port == 18737
    assert host.commands[0].startswith("systemd-run --quiet --collect --unit=hvsuite-undeclared-listener ")
    assert host.commands[-1] == "systemctl stop hvsuite-undeclared-listener"
    silent = _FakeTestinfraHost([""])
    with pytest.raises(TimeoutError), probes.temporary_listener(silent, 18737, timeout=0.2):
        pass
    assert silent.commands[-1] == "systemctl stop hvsuite-undeclared-listener"


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, server and client certificate issued with the step's own openssl commands."""
    directory = tmp_path_factory.mktemp("certs")
    tls_settings = TLSSettings(cert_dir=str(directory))
    paths = tls.Paths(str(directory))
    (directory / "openssl-hvsuite.cnf").write_text(
        tls.openssl_config(tls.wanted_sans(("host1", "host1", "10.0.0.5"), tls_settings))
    )
    for command in (
        tls.issue_ca_command(paths, tls_settings),
        tls.issue_leaf_command(paths, "server", "host1", tls_settings),
        tls.issue_leaf_command(paths, "client", tls.CLIENT_NAME, tls_settings),
    ):
        subprocess.run(["sh", "-c", command], check=True, capture_output=True)
    return directory


def _load(path: Path) -> x509.Certificate:
    return tls.parse_cert(path.read_bytes())


def _public(path: Path) -> str:
    return subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-pubout"], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_issued_certificates_pass_their_own_checks(issued: Path) -> None:
    ca = _load(issued / "ca.pem")
    server = _load(issued / "server.pem")
    settings = TLSSettings(cert_dir=str(issued))
    now = dt.datetime.now(dt.UTC)
    assert tls.ca_problems(ca, _public(issued / "ca-key.pem"), settings, now) == []
    assert (
        tls.leaf_problems(
            server,
            _public(issued / "server-key.pem"),
            ca,
            ["host1", "10.0.0.5"],
            ExtendedKeyUsageOID.SERVER_AUTH,
            settings,
            now,
        )
        == []
    )
    assert oct((issued / "server-key.pem").stat().st_mode & 0o777) == "0o600"


def test_certificate_close_to_expiry_or_missing_a_san_is_reissued(issued: Path) -> None:
    ca = _load(issued / "ca.pem")
    server = _load(issued / "server.pem")
    settings = TLSSettings(cert_dir=str(issued))
    late = server.not_valid_after_utc - dt.timedelta(days=settings.renew_before_days - 1)
    key = _public(issued / "server-key.pem")
    usage = ExtendedKeyUsageOID.SERVER_AUTH
    assert any(
        "expires in" in p for p in tls.leaf_problems(server, key, ca, ["host1"], usage, settings, late)
    )
    now = dt.datetime.now(dt.UTC)
    assert tls.leaf_problems(server, key, ca, ["host2"], usage, settings, now) == ["SANs missing: host2"]
    client_key = _public(issued / "client-key.pem")
    assert "key does not match the certificate" in tls.leaf_problems(
        server, client_key, ca, [], usage, settings, now
    )


def test_tls_step_issues_only_what_is_missing(issued: Path) -> None:
    settings = TLSSettings(cert_dir="/etc/flintlock/certs")
    paths = tls.Paths(settings.cert_dir)
    files = {paths.cert(role): (issued / f"{role}.pem").read_bytes() for role in ("ca", "server")}
    conn = FakeConnection(
        {
            tls.HostIdentity().command: (0, "host1\nhost1\n10.0.0.5\n", ""),
            tls.PublicKeyOf(paths.key("ca")).command: (0, _public(issued / "ca-key.pem"), ""),
            tls.PublicKeyOf(paths.key("server")).command: (0, _public(issued / "server-key.pem"), ""),
            tls.PublicKeyOf(paths.key("client")).command: (0, "", ""),
            re.compile(r".*dpkg-query.*"): (0, "openssl\t3.0\tii \n", ""),
        },
        files=files,
    )
    results = tls.ensure(fake_host(conn, mode="check"), settings)
    changed = {r.op: r.reason for r in results if r.changed}
    assert "tls CA" not in changed and "tls server certificate" not in changed
    assert changed["tls client certificate"] == "no certificate"


def test_certificate_readers_for_checks(issued: Path) -> None:
    server = tls.parse_cert((issued / "server.pem").read_bytes())
    client = tls.parse_cert((issued / "client.pem").read_bytes())
    assert tls.extended_key_usages(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert tls.extended_key_usages(tls.parse_cert((issued / "ca.pem").read_bytes())) is None
    assert tls.days_left(server, server.not_valid_after_utc - dt.timedelta(days=3, hours=1)) == 3
    der = subprocess.run(
        ["openssl", "x509", "-in", str(issued / "server.pem"), "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    assert tls.fingerprint(server) == hashlib.sha256(der).hexdigest()
    assert (
        tls.verify_command(tls.Paths("/etc/x"), "client")
        == "openssl verify -CAfile /etc/x/ca.pem /etc/x/client.pem"
    )
    with pytest.raises(ValueError):
        tls.parse_cert(b"")
    assert tls.load_cert(b"not a certificate") is None and tls.load_cert(None) is None


def _exec_start(unit: str) -> str:
    """The unit's command line roughly as ``systemctl show -p ExecStart`` prints it."""
    argv = unit.split("ExecStart=", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    return f"ExecStart={{ path={argv.split()[0]} ; argv[]={' '.join(argv.split())} ; ignore_errors=no }}"


@pytest.mark.parametrize("client_auth", [True, False])
def test_flintlockd_unit_serves_exactly_the_issued_certificates(client_auth: bool) -> None:
    pin = {"version": "v1", "url": "https://example.invalid/x", "sha256": "0" * 64}
    binaries = ("firecracker", "cloud-hypervisor", "flintlockd")
    settings = _settings(
        alpha={"tls": {"client_auth": client_auth}},
        artifacts={name: {**pin, "dest": f"/usr/local/bin/{name}"} for name in binaries},
    )
    line = _exec_start(flintlock.render_unit(settings, "eno1"))
    assert "--tls-cert=/etc/flintlock/certs/server.pem" in line
    assert tls.flintlock_problems(line, settings) == []
    assert tls.flintlock_problems(line.replace(" ;", " --insecure ;", 1), settings) == ["--insecure is set"]
    moved = line.replace("--tls-cert=/etc/flintlock/certs/server.pem", "--tls-cert=/tmp/self-signed.pem")
    assert tls.flintlock_problems(moved, settings) == [
        "--tls-cert is '/tmp/self-signed.pem', expected '/etc/flintlock/certs/server.pem'"
    ]
    assert len(tls.flintlock_problems("ExecStart=", settings)) == (4 if client_auth else 2)


def test_renew_window_must_be_below_lifetime() -> None:
    with pytest.raises(ValueError, match="renew_before_days"):
        TLSSettings(cert_days=30, renew_before_days=30)


# -- baseline and fail2ban --------------------------------------------------------------------


def test_namespaced_profile_writes_only_net_sysctls() -> None:
    chosen, skipped = hardening.sysctl_selection(
        {"net.ipv4.tcp_syncookies": "1", "vm.swappiness": "10"}, namespaced_only=True
    )
    assert chosen == {"net.ipv4.tcp_syncookies": "1"} and skipped == ["vm.swappiness"]


def test_ss_parser_and_undeclared_listeners() -> None:
    output = (
        'tcp   LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=1,fd=3))\n'
        'tcp   LISTEN 0 128 127.0.0.1:631 0.0.0.0:* users:(("cupsd",pid=2,fd=3))\n'
        'udp   UNCONN 0 0 [::]:5353 [::]:* users:(("avahi",pid=3,fd=3))\n'
    )
    listeners = hardening.parse_ss(output)
    assert [(x.proto, x.port, x.process) for x in listeners] == [
        ("tcp", 22, "sshd"),
        ("tcp", 631, "cupsd"),
        ("udp", 5353, "avahi"),
    ]
    assert [x.port for x in hardening.undeclared_listeners(listeners, load_settings())] == [5353]


def test_public_tcp_ports_leave_out_loopback_and_udp() -> None:
    output = (
        'tcp   LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=1,fd=3))\n'
        'tcp   LISTEN 0 128 [::1]:631 [::]:* users:(("cupsd",pid=2,fd=3))\n'
        'udp   UNCONN 0 0 0.0.0.0:68 0.0.0.0:* users:(("dhclient",pid=3,fd=3))\n'
    )
    assert hardening.public_tcp_ports(hardening.Listeners().parse(output)) == {22}


def test_ban_drill_commands_are_bounded_and_the_wait_gives_up() -> None:
    assert fail2ban.reach_command("10.0.0.5", 22) == "timeout 3 bash -c 'exec 3<>/dev/tcp/10.0.0.5/22'"
    logins = fail2ban.failed_logins_command("10.0.0.5", 22, 4)
    assert logins.startswith("for i in $(seq 4); do timeout 8 ssh ") and "hvs-no-such-user@10.0.0.5" in logins
    assert fail2ban.unban_command("10.0.0.7") == "fail2ban-client set sshd unbanip 10.0.0.7"
    answers = iter(["Banned IP list:\t\n", "Banned IP list:\t10.0.0.7\n"])
    assert fail2ban.wait_for_ban(lambda: next(answers), "10.0.0.7", timeout=5)
    assert not fail2ban.wait_for_ban(lambda: "Banned IP list:\t\n", "10.0.0.7", timeout=0)


def test_fail2ban_never_bans_loopback_or_the_controller() -> None:
    text = fail2ban.render(Settings().alpha.fail2ban, ssh_port=22, controller="10.231.0.1")
    assert "ignoreip = 127.0.0.1/8 ::1 10.231.0.1" in text
    assert "backend = systemd" in text and "banaction = nftables-multiport" in text
    assert fail2ban.parse_banned("`- Banned IP list:\t10.0.0.2 10.0.0.3\n") == {"10.0.0.2", "10.0.0.3"}


def test_eventually_returns_the_first_done_value_or_the_last_one_at_the_bound() -> None:
    answers = iter([1, 2, 3, 4])
    assert eventually(lambda: next(answers), lambda value: value >= 3, timeout=5, interval=0) == 3
    started = time.monotonic()
    assert eventually(lambda: 0, timeout=0.2, interval=0.05) == 0
    assert 0.2 <= time.monotonic() - started < 2


def test_a_listener_on_another_address_of_the_host_is_not_behind_its_own() -> None:
    output = (
        'tcp LISTEN 0 4096 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=1,fd=3))\n'
        'tcp LISTEN 0 4096 10.0.0.241:80 0.0.0.0:* users:(("haproxy",pid=2,fd=7))\n'
        'tcp LISTEN 0 4096 10.0.0.5:9100 0.0.0.0:* users:(("node_exporter",pid=3,fd=3))\n'
    )
    listeners = hardening.Listeners().parse(output)
    assert hardening.public_tcp_ports(listeners) == {22, 80, 9100}
    assert hardening.public_tcp_ports(listeners, "10.0.0.5") == {22, 9100}
