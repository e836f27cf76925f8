"""Alpha's step logic as data: facts in, commands out, no SSH."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from settings.model import PortRule, Settings, SSHHardening, TLSSettings
from steps import fail2ban, firewall, flintlock, guard, hardening, probes, sshd, tls
from steps.runner import ApplyError
from steps.testing import FakeConnection, fake_host

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# -- firewall ---------------------------------------------------------------------------------


def _settings(**changes) -> Settings:
    return Settings(**changes)


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


def test_scratch_admins_default_to_the_suite_subnet() -> None:
    settings = _settings()
    assert firewall.admin_sources(settings, scratch=True) == [settings.scratch.subnet]
    assert firewall.admin_sources(settings, scratch=False) == []


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


def test_firewall_unchanged_when_files_and_live_table_match() -> None:
    settings = _settings()
    rules = firewall.render(settings, [settings.scratch.subnet])
    conn = FakeConnection(
        {
            firewall.SSHSession().command: (0, "10.231.0.1 50000 10.231.0.5 22\n", ""),
            firewall.LiveTableDigest().command: (
                0,
                f'table inet hvsuite_filter {{\n\tcomment "hvsuite {firewall.digest_of(rules)}"\n',
                "",
            ),
            re.compile(r".*dpkg-query.*"): (0, "nftables\t1.0.6\tii \n", ""),
            re.compile(r"systemctl show .*nftables.*"): (
                0,
                "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n",
                "",
            ),
        },
        files={firewall.RULES_FILE: rules.encode(), firewall.MAIN_CONFIG: firewall.render_main().encode()},
    )
    host = fake_host(conn)
    results = firewall.apply(host, settings, scratch=True)
    assert [r.op for r in results if r.changed] == []


def test_firewall_refuses_rules_that_would_lock_out_the_controller() -> None:
    settings = _settings(ports=[PortRule(name="ssh", team="Alpha", port=22, sources=["192.0.2.0/24"])])
    conn = FakeConnection(
        {
            firewall.SSHSession().command: (0, "10.231.0.1 50000 10.231.0.5 22\n", ""),
            re.compile(r".*dpkg-query.*"): (0, "nftables\t1.0.6\tii \n", ""),
        }
    )
    with pytest.raises(ApplyError, match="would not let the controller"):
        firewall.apply(fake_host(conn), settings, scratch=True)


def test_a_changed_ruleset_is_validated_loaded_under_guard_and_proven() -> None:
    settings = _settings()
    conn = FakeConnection(
        {
            firewall.SSHSession().command: (0, "10.231.0.1 50000 10.231.0.5 22\n", ""),
            re.compile(r".*dpkg-query.*"): (0, "nftables\t1.0.6\tii \n", ""),
            re.compile(r"systemctl show .*nftables.*"): (
                0,
                "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n",
                "",
            ),
        }
    )
    host = fake_host(conn)
    firewall.apply(host, settings, scratch=True)
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


def test_sshd_validates_the_candidate_before_it_is_installed() -> None:
    conn = FakeConnection({re.compile(r"sshd -t -f .*"): (255, "", "line 1: Bad configuration option")})
    conn.respond(re.compile(r".*printf 'Include.*"), (255, "", "Bad configuration option"))
    host = fake_host(conn)
    host.fresh = lambda: host  # type: ignore[method-assign]
    with pytest.raises(ApplyError, match="rejected"):
        sshd.install_config(host, SSHHardening(), "Bogus yes\n")
    assert sshd.DROPIN not in conn.files, "a rejected drop-in reached its live path"
    assert not any(c.startswith("systemctl try-reload-or-restart") for c in conn.commands[:-2])


def test_sshd_unchanged_drop_in_is_not_reloaded() -> None:
    text = sshd.render(SSHHardening())
    conn = FakeConnection(files={sshd.DROPIN: text.encode()})
    result = sshd.install_config(fake_host(conn), SSHHardening(), text)
    assert not result.changed and conn.commands == []


def test_effective_config_mismatches_are_named() -> None:
    ssh = SSHHardening()
    ok = "\n".join(f"{k} {v[0]}" for k, v in sshd.expected_effective(ssh).items())
    assert sshd.effective_mismatches(sshd.parse_effective(ok), ssh) == []
    bad = ok.replace("passwordauthentication no", "passwordauthentication yes")
    assert sshd.effective_mismatches(sshd.parse_effective(bad), ssh) == [
        "passwordauthentication is 'yes', expected 'no'"
    ]


def test_a_rollback_drill_returns_the_refusal_and_fails_when_the_drop_in_is_kept() -> None:
    conn = FakeConnection({re.compile(r".*printf 'Include.*"): (255, "", "Bad configuration option")})
    host = fake_host(conn)
    host.fresh = lambda: host  # type: ignore[method-assign]
    assert "rejected" in sshd.refused_install(host, SSHHardening(), "Bogus yes\n")
    accepted = fake_host(FakeConnection())
    accepted.fresh = lambda: accepted  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="kept the drill's drop-in"):
        sshd.refused_install(accepted, SSHHardening(), "MaxAuthTries 3\n")


def test_host_key_algorithms_and_weak_types_follow_the_allowed_types() -> None:
    ssh = SSHHardening()
    assert sshd.host_key_algorithms(ssh) == [
        alg for kind in ssh.host_key_types for alg in sshd.HOST_KEY_ALGORITHMS[kind]
    ]
    assert sshd.disallowed_host_key_types(SSHHardening(host_key_types=["ed25519"])) == ["dsa", "ecdsa", "rsa"]
    assert sshd.EffectiveConfig().parse("PasswordAuthentication no\n") == {"passwordauthentication": "no"}
    assert sshd.config_guard().timer == "hvsuite-guard-sshd.timer"


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


def test_port_scan_tells_open_from_refused_on_loopback() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            closed = other.getsockname()[1]
        result = probes.scan_ports("127.0.0.1", [port, closed], timeout=1.0)
    assert result.open == {port} and result.refused == {closed}


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
    assert probes.read_fact(session, firewall.SSHSession()) == ("10.0.0.9", "10.0.0.5")
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
    assert flintlock.tls_problems(line, settings) == []
    assert flintlock.tls_problems(line.replace(" ;", " --insecure ;", 1), settings) == ["--insecure is set"]
    moved = line.replace("--tls-cert=/etc/flintlock/certs/server.pem", "--tls-cert=/tmp/self-signed.pem")
    assert flintlock.tls_problems(moved, settings) == [
        "--tls-cert is '/tmp/self-signed.pem', expected '/etc/flintlock/certs/server.pem'"
    ]
    assert len(flintlock.tls_problems("ExecStart=", settings)) == (4 if client_auth else 2)


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
    assert [x.port for x in hardening.undeclared_listeners(listeners, Settings())] == [5353]


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
    assert probes.eventually(lambda: next(answers), lambda value: value >= 3, timeout=5, interval=0) == 3
    started = time.monotonic()
    assert probes.eventually(lambda: 0, timeout=0.2, interval=0.05) == 0
    assert 0.2 <= time.monotonic() - started < 2
