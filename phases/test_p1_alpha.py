"""Team Alpha (phase 1): security baseline.

Apply: TLS CA + server/client certificates for flintlock; an nftables firewall derived from
the declared ports; sshd's main config and hardening drop-in (check, validate, swap,
fresh-login proof, automatic rollback of both) with a legal banner, TCPKeepAlive off and a
measured MaxSessions; the host baseline the CIS Debian benchmark and the dev-sec baselines
expect (network sysctls, the security suite and automatic security updates, login.defs,
core dumps off, unused protocols and storage drivers not loadable, password quality,
debsums / needrestart / libpam-tmpdir, a bounded AIDE baseline, process accounting, audit
rules, systemd sandboxing); chrony; fail2ban's sshd jail in jail.local.

Verify from the outside wherever possible: a bounded port scan from the controller, the SSH
server's offered methods and algorithms, a new key login, two rollback drills (a syntax
error and a config that locks the operator out), a ban of a second host after failed
logins; each baseline item from a fresh login or with the real tool (pwscore, debsums,
aide, lastcomm, modprobe, systemd-analyze security, chronyc), an AIDE drill and a new
account's password ages. Host-wide proofs (kernel modules not loading, audit rules in the
kernel, fs.suid_dumpable, the disciplined clock) need host-kernel. Flintlock TLS: the
flintlockd unit Base installed, as systemd loaded it, serves the
issued certificate and never ``--insecure`` (needs the upstream artifacts Base installs).
Alpha does not start flintlockd: it needs containerd, which Bravo (phase 2) brings, and
Bravo proves the TLS handshake on the gRPC port once it runs.
"""

from __future__ import annotations

import re
import secrets
import shlex
import time
from collections.abc import Iterator

import paramiko
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from apply.api import Context
from apply.facts import OsRelease, SSHSession, Sysctl
from apply.poll import eventually
from checks import probes
from engine import apply_fixture, not_applicable, task
from settings.base import EffectiveProfile
from settings.model import Settings
from steps.alpha import baseline, fail2ban, firewall, hardening, sandbox, sshd, timesync, tls
from steps.base import flintlock
from transport.ssh import open_client

pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]

# A port no team declares, for the "undeclared listener is filtered" proof.
UNDECLARED_PORT = 18737


@apply_fixture
def applied(ctx: Context, fleet, settings: Settings) -> None:
    for step in (tls.apply, firewall.apply, sshd.apply, hardening.apply):
        step(ctx)
    role = settings.alpha.time.fleet_source_role
    if role is not None:
        # The fleet's time source first, so the primary's chrony finds it answering.
        timesync.serve(fleet.context(fleet.one(role)), [ctx.address])
    timesync.apply(ctx)
    fail2ban.apply(ctx)


def _key_login(target) -> str:
    """``id -un`` over a brand-new key login from the controller."""
    return probes.ssh_key_login(target.endpoint)


# -- TLS certificates -------------------------------------------------------------------------


@task("TLS certificates")
def test_server_certificate_chains_to_the_ca_and_names_the_host(
    host, settings: Settings, target, certs
) -> None:
    host.run_expect([0], tls.verify_command(certs, "server"))
    cert = tls.parse_cert(host.file(certs.cert("server")).content)
    names = tls.cert_sans(cert)
    assert target.address in names, f"SANs {sorted(names)} lack the address the controller uses"
    assert host.check_output("hostname") in names
    days_left = tls.days_left(cert)
    assert days_left > settings.alpha.tls.renew_before_days, f"server certificate expires in {days_left} days"


@task("TLS certificates")
def test_private_keys_are_root_only(host, settings: Settings, certs) -> None:
    for role in ["ca", "server", *(["client"] if settings.alpha.tls.client_auth else [])]:
        key = host.file(certs.key(role))
        assert key.is_file, certs.key(role)
        assert (key.user, key.group, key.mode) == ("root", "root", 0o600), certs.key(role)


@task("TLS certificates")
def test_client_certificate_is_for_client_auth_only(host, settings: Settings, certs) -> None:
    if not settings.alpha.tls.client_auth:
        not_applicable("alpha.tls.client_auth is off: no client certificate is issued")
    host.run_expect([0], tls.verify_command(certs, "client"))
    client = tls.parse_cert(host.file(certs.cert("client")).content)
    assert tls.extended_key_usages(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]


# -- Firewall ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controller_address(host) -> str:
    # The address the target sees the controller connect from (not the apply step's view).
    return probes.read_fact(host, SSHSession()).client


@task("Firewall")
@pytest.mark.full
def test_port_scan_shows_exactly_the_allowed_ports(
    host, ctx: Context, settings: Settings, target, controller_address
) -> None:
    admins = settings.firewall.admin_sources
    allowed = firewall.allowed_ports(settings, admins, controller_address, peers=ctx.peers)
    before = hardening.public_tcp_ports(probes.read_fact(host, hardening.Listeners()), target.address)
    plan = probes.scan_plan(rule.port for rule in settings.ports)
    scan = probes.scan_ports(target.address, plan, timeout=1.0, concurrency=128)
    after = hardening.public_tcp_ports(probes.read_fact(host, hardening.Listeners()), target.address)
    # A service may start while the scan runs (a just-restarted host): what listened
    # throughout must answer, what answered must be allowed and listen once the scan is over.
    assert allowed & before & after <= scan.open <= allowed & after, (
        f"open {sorted(scan.open)}; allowed for {controller_address}: {sorted(allowed)}; "
        f"listening before the scan: {sorted(before)}, after: {sorted(after)}"
    )
    # Default deny means drop: closed ports time out rather than answer with a reset.
    assert not scan.refused - allowed, (
        f"answered with a reset (not dropped): {sorted(scan.refused - allowed)}"
    )


@pytest.fixture
def admin_only_port(host, settings: Settings, target) -> Iterator[int]:
    """A declared admin-only port that listens: a service's, or (before Bravo and Charlie
    start theirs) a throwaway listener on one, so the probe's scan has something to miss."""
    listening = hardening.public_tcp_ports(probes.read_fact(host, hardening.Listeners()), target.address)
    # Open to the admins (the controller proves it answers), not to the world.
    admin_only = [
        r.port
        for r in settings.ports
        if r.proto == "tcp" and "admin" in r.sources and "world" not in r.sources
    ]
    assert admin_only, "no admin-only port is declared: nothing to prove closed"
    serving = sorted(set(admin_only) & listening)
    if serving:
        yield serving[0]
        return
    with probes.temporary_listener(host, admin_only[0], unit="hvsuite-admin-only-listener") as port:
        yield port


@task("Firewall")
@pytest.mark.full
def test_a_host_that_is_no_admin_reaches_only_the_ports_open_to_it(
    host, probe, ctx: Context, settings: Settings, target, admin_only_port: int
) -> None:
    # The same scan from the probe host, which is outside firewall.admin_sources: admin-only
    # ports (metrics, the registry, flintlock's API) must be as closed to it as to anyone; it
    # reaches the world's ports and those opened to one of its roles (its journal upload).
    address = probes.read_fact(probe.host, firewall.SourceAddress(target.address))
    allowed = firewall.allowed_ports(settings, settings.firewall.admin_sources, address, peers=ctx.peers)
    assert admin_only_port not in allowed, f"{address} is inside firewall.admin_sources: this proves nothing"
    # The controller (an admin) reaches the admin-only port: it answers, so a miss is the firewall.
    assert probes.scan_ports(target.address, [admin_only_port], timeout=2.0).open == {admin_only_port}
    listening = hardening.public_tcp_ports(probes.read_fact(host, hardening.Listeners()), target.address)
    plan = probes.scan_plan(rule.port for rule in settings.ports)
    scan = probes.scan_ports(target.address, plan, timeout=1.0, concurrency=128, via=probe.remote)
    assert scan.open == allowed & listening, (
        f"from {address}: open {sorted(scan.open)}; open to it and listening: {sorted(allowed & listening)}"
    )
    assert admin_only_port in scan.filtered, f"port {admin_only_port} answered {address} instead of dropping"


@pytest.fixture
def undeclared_listener(host) -> Iterator[int]:
    with probes.temporary_listener(host, UNDECLARED_PORT) as port:
        yield port


@task("Firewall")
@pytest.mark.full
def test_an_undeclared_listener_is_dropped(settings: Settings, target, undeclared_listener: int) -> None:
    assert undeclared_listener not in {rule.port for rule in settings.ports}
    scan = probes.scan_ports(target.address, [undeclared_listener], timeout=2.0, concurrency=1)
    assert scan.filtered == {undeclared_listener}, f"port {undeclared_listener} is reachable: {scan}"


@task("Firewall")
def test_ruleset_is_default_deny_and_loaded_at_boot(host) -> None:
    assert "policy drop;" in host.check_output(firewall.list_ruleset_command())
    assert host.service("nftables").is_enabled


# -- SSH hardening ----------------------------------------------------------------------------


@task("SSH hardening")
def test_password_and_keyboard_interactive_are_not_offered(target) -> None:
    assert probes.ssh_auth_methods(target.endpoint) == ["publickey"]
    assert probes.ssh_password_login_refused(target.endpoint) == "not offered"


@task("SSH hardening")
def test_a_new_key_login_works(target) -> None:
    assert _key_login(target) == target.user


@task("SSH hardening")
def test_server_offers_only_modern_algorithms(settings: Settings, target) -> None:
    ssh = settings.alpha.ssh
    offered = probes.ssh_algorithms(target.address, target.port)
    assert set(offered.kex) <= set(ssh.kex), offered.kex
    assert set(offered.ciphers) <= set(ssh.ciphers), offered.ciphers
    assert set(offered.macs) <= set(ssh.macs), offered.macs
    assert set(offered.host_key) <= set(sshd.host_key_algorithms(ssh)), offered.host_key


@task("SSH hardening")
def test_effective_sshd_config_is_hardened(host, settings: Settings) -> None:
    effective = probes.read_fact(host, sshd.EffectiveConfig())
    assert sshd.effective_mismatches(effective, settings.alpha.ssh) == []
    for kind in sshd.disallowed_host_key_types(settings.alpha.ssh):
        assert not host.file(sshd.host_key_path(kind)).exists, f"weak {kind} host key still present"


@task("SSH hardening")
def test_the_legal_banner_is_shown_before_login(host, settings: Settings, target) -> None:
    client = open_client(target.endpoint, timeout=10)
    try:
        shown = (client.get_transport().get_banner() or b"").decode()  # type: ignore[union-attr]
    finally:
        client.close()
    assert shown.strip() == settings.alpha.banner.strip(), f"SSH banner {shown!r}"
    # The console's banner is the same text (agetty prints /etc/issue).
    assert host.file("/etc/issue").content_string.strip() == settings.alpha.banner.strip()


@task("SSH hardening")
def test_a_connection_gets_max_sessions_and_no_more(settings: Settings, target) -> None:
    limit = settings.alpha.ssh.max_sessions
    client = open_client(target.endpoint, timeout=10)
    transport = client.get_transport()
    assert transport is not None
    channels = []
    try:
        for _ in range(limit):
            channels.append(transport.open_session(timeout=10))
        with pytest.raises(paramiko.ChannelException):
            channels.append(transport.open_session(timeout=10))
    finally:
        for channel in channels:
            channel.close()
        client.close()


@task("SSH hardening")
@pytest.mark.full
def test_a_syntax_error_is_never_installed(host, remote, settings: Settings, target) -> None:
    before = host.file(sshd.DROPIN).sha256sum
    message = sshd.refused_install(
        remote, settings.alpha.ssh, "ThisIsNotAnSshdKeyword yes\n", guard_seconds=settings.alpha.guard_seconds
    )
    assert "rejected" in message, message
    assert host.file(sshd.DROPIN).sha256sum == before
    assert _key_login(target) == target.user


@task("SSH hardening")
@pytest.mark.full
def test_a_lockout_config_is_rolled_back_and_access_kept(host, remote, settings: Settings, target) -> None:
    before = host.file(sshd.DROPIN).sha256sum
    lockout = sshd.render(settings.alpha.ssh, extra=["AllowUsers nobody"])
    message = sshd.refused_install(
        remote, settings.alpha.ssh, lockout, guard_seconds=settings.alpha.guard_seconds
    )
    assert "rolled back" in message, message
    assert host.file(sshd.DROPIN).sha256sum == before
    assert not host.service(sshd.config_guard().timer).is_running
    assert _key_login(target) == target.user


# -- Host baseline ----------------------------------------------------------------------------


@task("Host baseline")
def test_network_sysctls_are_hardened_and_persisted(
    host, settings: Settings, profile: EffectiveProfile
) -> None:
    chosen, _ = hardening.selected_sysctls(settings, profile)
    assert {key: str(host.sysctl(key)) for key in chosen} == chosen
    persisted = host.file(hardening.SYSCTL_FILE).content_string
    assert all(f"{key} = {value}" in persisted for key, value in chosen.items())


@task("Host baseline")
def test_automatic_security_updates_are_scheduled(host) -> None:
    assert host.package("unattended-upgrades").is_installed
    periodic = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    assert 'APT::Periodic::Update-Package-Lists "1";' in periodic
    for timer in hardening.APT_TIMERS:
        assert host.service(timer).is_enabled and host.service(timer).is_running, timer


@task("Host baseline")
def test_no_undeclared_service_listens(host, settings: Settings) -> None:
    assert hardening.undeclared_listeners(probes.read_fact(host, hardening.Listeners()), settings) == []


@pytest.fixture
def fresh_login(target) -> Iterator[paramiko.SSHClient]:
    """A brand-new key login: what PAM gives a session that starts now."""
    client = open_client(target.endpoint, timeout=10)
    yield client
    client.close()


def _run(client: paramiko.SSHClient, command: str, *, timeout: float = 30) -> tuple[int, str]:
    _, stdout, _ = client.exec_command(command, timeout=timeout)
    output = stdout.read().decode()
    return stdout.channel.recv_exit_status(), output


@task("Host baseline")
def test_the_security_suite_is_fetched_by_apt(host, settings: Settings) -> None:
    if not settings.alpha.security_updates.enabled:
        not_applicable("alpha.security_updates.enabled is off: no security source is added")
    suite = baseline.security_suite(probes.read_fact(host, OsRelease()))
    assert suite in {s for _, s in probes.read_fact(host, baseline.AptSources())}
    # apt-cache lists a release only once its lists were fetched (apt update succeeded).
    assert f"n={suite}," in host.check_output("apt-cache policy")


@task("Host baseline")
def test_login_defaults_are_hardened_and_root_never_expires(host, settings: Settings) -> None:
    defs = baseline.parse_login_defs(host.file(baseline.LOGIN_DEFS).content_string)
    wanted = baseline.login_defs_values(settings)
    assert {key: defs.get(key) for key in wanted} == wanted
    # root logs in with a key: an expiring password would lock that login out.
    ages = host.check_output("chage -l root")
    assert re.search(r"Password expires\s*:\s*never", ages), ages


@task("Host baseline")
@pytest.mark.full
def test_a_new_account_gets_the_password_ages(host, settings: Settings) -> None:
    user = f"hvs-defs-{secrets.token_hex(4)}"
    host.run_expect([0], f"useradd --no-create-home --shell /usr/sbin/nologin {user}")
    try:
        days = host.check_output(f"chage -l {user}")
    finally:
        host.run_expect([0], f"userdel {user}")
    defs = settings.alpha.login_defs
    assert re.search(
        rf"Maximum number of days between password change\s*:\s*{defs.pass_max_days}$", days, re.M
    )
    assert re.search(
        rf"Minimum number of days between password change\s*:\s*{defs.pass_min_days}$", days, re.M
    )
    assert re.search(
        rf"Number of days of warning before password expires\s*:\s*{defs.pass_warn_age}$", days, re.M
    )


@task("Host baseline")
def test_a_new_login_cannot_dump_core(host, fresh_login: paramiko.SSHClient) -> None:
    assert _run(fresh_login, "ulimit -Hc") == (0, "0\n")
    coredump = host.check_output("systemd-analyze cat-config systemd/coredump.conf")
    assert re.search(r"^Storage=none$", coredump, re.M) and re.search(r"^ProcessSizeMax=0$", coredump, re.M)


@task("Host baseline")
@pytest.mark.requires("host-kernel")  # fs.suid_dumpable is host-wide
def test_setuid_programs_never_dump_core(host) -> None:
    assert probes.read_fact(host, Sysctl("fs.suid_dumpable")) == "0"


@task("Host baseline")
def test_unused_protocols_and_storage_drivers_are_disabled(host, settings: Settings) -> None:
    config = probes.read_fact(host, baseline.ModprobeConfig())
    assert baseline.modules_not_disabled(config, settings.alpha.disabled_modules) == []
    for module in settings.alpha.disabled_modules:
        # What modprobe would do (a dry run): run /bin/false instead of loading it.
        assert host.check_output(f"modprobe -n -v {module}").strip() == "install /bin/false", module


@task("Host baseline")
@pytest.mark.requires("host-kernel")  # loading a module is the host kernel's
def test_disabled_modules_cannot_load(host, settings: Settings) -> None:
    for module in settings.alpha.disabled_modules:
        assert host.run(f"modprobe {module}").rc != 0, f"modprobe {module} succeeded"
    loaded = {line.split()[0] for line in host.file("/proc/modules").content_string.splitlines()}
    assert not loaded & {m.replace("-", "_") for m in settings.alpha.disabled_modules}


@task("Host baseline")
def test_weak_passwords_are_refused(host) -> None:
    assert "pam_pwquality.so" in host.file("/etc/pam.d/common-password").content_string
    # pwscore applies the configured rules through libpwquality, as pam_pwquality does.
    weak = host.run("echo password1 | pwscore")
    assert weak.rc != 0, weak.stdout
    strong = "Hv5!" + secrets.token_urlsafe(18)
    assert host.run(f"echo {shlex.quote(strong)} | pwscore").rc == 0


@task("Host baseline")
def test_each_login_gets_a_private_tmpdir(fresh_login: paramiko.SSHClient) -> None:
    status, output = _run(fresh_login, 'echo "$TMPDIR"; stat -c "%a %U" "$TMPDIR"')
    assert status == 0 and output.split("\n")[:2] == ["/tmp/user/0", "700 root"], output


@task("Host baseline")
def test_needrestart_reports_in_batch_mode(host) -> None:
    report = host.run("needrestart -b -r l")
    assert report.rc == 0 and "NEEDRESTART-VER:" in report.stdout, report.stdout + report.stderr


@task("Host baseline")
@pytest.mark.full
def test_installed_packages_match_their_checksums(host) -> None:
    result = host.run("timeout 300 debsums -s")
    assert result.rc == 0, f"debsums -s: {result.stdout}{result.stderr}"


@task("Host baseline")
def test_the_integrity_baseline_checks_within_its_bound(host, settings: Settings) -> None:
    bound = settings.alpha.integrity.check_seconds
    started = time.monotonic()
    result = host.run(f"timeout {bound} {baseline.aide_command('check')}")
    took = time.monotonic() - started
    # aide's exit code: 0 no change, 1/2/4 added/removed/changed entries; 14 and up errors.
    assert result.rc < 8, f"aide --check exited {result.rc} after {took:.1f} s: {result.stderr}"
    assert (baseline.aide_entries(result.stdout) or 0) > 0, result.stdout


@pytest.fixture
def watched_file(host, settings: Settings) -> Iterator[str]:
    """A new file in the first directory AIDE watches, removed afterwards."""
    directory = next(p for p in baseline.aide_paths(settings) if host.file(p).is_directory)
    path = f"{directory}/hvsuite-aide-drill-{secrets.token_hex(6)}"
    host.run_expect([0], f"umask 077 && echo drill > {shlex.quote(path)}")
    yield path
    host.run(f"rm -f -- {shlex.quote(path)}")


@task("Host baseline")
@pytest.mark.full
def test_aide_reports_a_new_file_in_a_watched_directory(host, watched_file: str) -> None:
    report = host.run(baseline.aide_command("check"))
    assert report.rc & 1, f"aide --check exited {report.rc}: no entry added"
    assert watched_file in baseline.aide_added(report.stdout), report.stdout[-3000:]


@task("Host baseline")
def test_process_accounting_records_a_new_command(host) -> None:
    name = f"hvs{secrets.token_hex(5)}"
    # The process renames itself (its accounting record carries that name) and exits.
    rename = f"import ctypes; ctypes.CDLL(None).prctl(15, b{name!r}, 0, 0, 0)"
    host.run_expect([0], f"python3 -c {shlex.quote(rename)}")
    assert name in host.check_output(f"lastcomm --command {name} || true")


@task("Host baseline")
def test_audit_rules_watch_the_sensitive_paths(host, settings: Settings) -> None:
    # /etc/audit/audit.rules is what augenrules compiled from rules.d, what auditd loads.
    compiled = host.file("/etc/audit/audit.rules").content_string
    for path in [*settings.alpha.audit_paths, settings.alpha.tls.cert_dir]:
        assert f"-w {path} -p wa -k hvsuite" in compiled, path
        assert host.file(path).exists, f"{path} is watched but does not exist"


@task("Host baseline")
@pytest.mark.requires("host-kernel")  # the kernel's audit is host-wide
def test_the_kernel_enforces_the_audit_rules(host, settings: Settings) -> None:
    assert host.service("auditd").is_running
    loaded = host.check_output("auditctl -l")
    for path in [*settings.alpha.audit_paths, settings.alpha.tls.cert_dir]:
        assert re.search(rf"^-w {re.escape(path.rstrip('/'))}/? -p wa -k hvsuite$", loaded, re.M), path


@task("Host baseline")
def test_time_follows_the_configured_sources(host, ctx: Context, settings: Settings) -> None:
    expected = set(timesync.fleet_sources(ctx))
    # chrony selects a source a few polls after it starts (iburst: seconds).
    tracking = eventually(
        lambda: probes.read_fact(host, timesync.Tracking()),
        lambda t: timesync.reference(t) is not None,
        timeout=90,
    )
    reference = timesync.reference(tracking)
    assert reference is not None, f"chrony follows no source: {tracking}"
    if not settings.alpha.time.servers:
        assert reference in expected, f"chrony follows {reference}, not the fleet's source {sorted(expected)}"
    assert tracking.get("Leap status") == "Normal", tracking


@task("Host baseline")
@pytest.mark.requires("host-kernel")  # the clock is the host's
def test_the_kernel_clock_is_synchronised(host) -> None:
    assert host.check_output("timedatectl show -p NTPSynchronized --value") == "yes"


@task("Host baseline")
def test_services_are_sandboxed_within_their_bound(host, settings: Settings) -> None:
    exposures = {
        unit: probes.read_fact(host, sandbox.Exposure(unit)) for unit in settings.alpha.sandbox_exposure
    }
    over = {u: e for u, e in exposures.items() if e is None or e > settings.alpha.sandbox_exposure[u]}
    assert not over, f"exposure {exposures}; bounds {settings.alpha.sandbox_exposure}"
    for unit in exposures:
        # Sandboxed and still doing its work.
        assert host.service(unit).is_running, unit


# -- fail2ban ---------------------------------------------------------------------------------


@task("fail2ban")
def test_sshd_jail_is_active(host, settings: Settings) -> None:
    assert host.service("fail2ban").is_running and host.service("fail2ban").is_enabled
    assert "Currently banned" in host.check_output(fail2ban.STATUS)
    assert "nftables" in host.check_output(fail2ban.ACTIONS)
    # The server runs with the suite's jail settings (from jail.local).
    assert host.check_output("fail2ban-client get sshd maxretry") == str(settings.alpha.fail2ban.maxretry)
    assert host.file(fail2ban.JAIL).exists and not host.file(fail2ban.OLD_JAIL).exists


@pytest.fixture
def banned_probe(host, probe) -> Iterator[str]:
    # Start clean: an earlier run's ban (bantime outlasts a run) must not decide this one.
    host.run(fail2ban.unban_command(probe.target.address))
    yield probe.target.address
    host.run(fail2ban.unban_command(probe.target.address))


@task("fail2ban")
@pytest.mark.full
def test_failed_logins_from_a_second_host_get_it_banned(
    host, probe, settings: Settings, target, banned_probe
) -> None:
    reach = fail2ban.reach_command(target.address, target.port)
    probe.host.run_expect([0], reach)
    attempts = settings.alpha.fail2ban.maxretry + 1
    probe.host.run(fail2ban.failed_logins_command(target.address, target.port, attempts))
    banned = fail2ban.wait_for_ban(lambda: host.check_output(fail2ban.STATUS), banned_probe, timeout=30)
    assert banned, "the probe was not banned within 30 s"
    # fail2ban lists the ban before its nftables action has run (and again on unban).
    dropped = eventually(lambda: probe.host.run(reach).rc != 0, timeout=15)
    assert dropped, "banned host still reaches SSH 15 s after the ban was listed"
    host.run_expect([0, 1], fail2ban.unban_command(banned_probe))
    reaches = eventually(lambda: probe.host.run(reach).rc == 0, timeout=15)
    assert reaches, "unbanned host still cannot reach SSH after 15 s"


# -- Flintlock TLS ----------------------------------------------------------------------------


@task("Flintlock TLS")
@pytest.mark.requires("upstream-artifacts")
def test_flintlockd_unit_serves_the_issued_certificate_never_insecure(
    host, settings: Settings, certs
) -> None:
    # The unit as systemd loaded it (not the file), and that view is not stale.
    assert host.check_output(flintlock.NEED_DAEMON_RELOAD) == "no"
    exec_start = host.check_output(flintlock.EXEC_START)
    assert tls.flintlock_problems(exec_start, settings) == [], exec_start
    assert host.file(certs.cert("server")).is_file and host.file(certs.key("server")).is_file
