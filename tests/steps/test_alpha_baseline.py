"""Alpha's host baseline as data: the settings it accepts, what it renders, and the commands
it would run on a fresh host, a converged one, in check mode and on each profile."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from apply.facts import AptListsAge, CommandSucceeds, DebPackages, FileInfo, OsRelease, ServiceState, Sysctl
from apply.testing import FakeConnection, fake_context, fake_host
from settings.loader import load_settings
from steps.alpha import baseline, fail2ban, hardening, sandbox, sshd, timesync
from steps.alpha.settings import AlphaSettings, IntegritySettings, LoginDefs, TimeSettings

SETTINGS = load_settings()
ALPHA = SETTINGS.alpha
DEBIAN = "ID=debian\nVERSION_ID=12\nVERSION_CODENAME=bookworm\n"

# -- settings ---------------------------------------------------------------------------------


def test_login_defs_refuse_min_rounds_above_max() -> None:
    with pytest.raises(ValidationError, match=r"sha_crypt_min_rounds \(9000\) is above sha_crypt_max_rounds"):
        LoginDefs(sha_crypt_min_rounds=9000, sha_crypt_max_rounds=5000)


def test_login_defs_refuse_a_warning_longer_than_the_maximum_age() -> None:
    with pytest.raises(ValidationError, match=r"alpha.login_defs: pass_min_days and pass_warn_age"):
        LoginDefs(pass_max_days=5, pass_warn_age=7)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("disabled_modules", ["usb storage"], r"alpha.disabled_modules: 'usb storage' are not module names"),
        ("pwquality", {"minlength": 9}, r"alpha.pwquality: minlength are not pwquality.conf options"),
        ("audit_paths", ["etc/passwd"], r"alpha.audit_paths: 'etc/passwd' must be absolute"),
        ("sandbox_exposure", {"fail2ban.service": 11}, r"alpha.sandbox_exposure: fail2ban.service=11"),
        ("banner", "C:\\ not plain", r"alpha.banner must be non-empty plain text"),
    ],
)
def test_bad_baseline_settings_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AlphaSettings(**{field: value})


def test_integrity_paths_must_be_absolute_and_normalised() -> None:
    with pytest.raises(ValidationError, match=r"alpha.integrity.paths: '/etc/ssh/' must be absolute"):
        IntegritySettings(paths=["/etc/ssh/"])


def test_time_needs_some_source() -> None:
    with pytest.raises(ValidationError, match=r"alpha.time: servers is empty and no fleet_source_role"):
        TimeSettings(servers=[])


def test_the_scratch_config_syncs_time_inside_the_fleet() -> None:
    assert ALPHA.time.servers == [] and ALPHA.time.fleet_source_role == "probe"


# -- renderers --------------------------------------------------------------------------------


def test_login_defs_replace_the_active_and_the_commented_keyword_only() -> None:
    text = "#\tUMASK\t\tDefault umask.\nUMASK\t\t022\n#SHA_CRYPT_MIN_ROUNDS 5000\nPASS_MAX_DAYS\t99999\n"
    conn = FakeConnection(files={baseline.LOGIN_DEFS: text.encode()})
    conn.set_fact(FileInfo(baseline.LOGIN_DEFS), "regular file|root|root|644|100\n")
    baseline.login_defs(fake_host(conn), SETTINGS)
    written = conn.files[baseline.LOGIN_DEFS].decode()
    # The commented default is replaced where it was; the explanatory comment stays.
    assert written.startswith("#\tUMASK\t\tDefault umask.\nUMASK\t\t027\nSHA_CRYPT_MIN_ROUNDS\t\t5000\n")
    values = baseline.parse_login_defs(written)
    assert values == {**values, **baseline.login_defs_values(SETTINGS)}


def test_modprobe_config_installs_false_and_blacklists_each_module() -> None:
    text = baseline.render_modprobe(["dccp", "usb-storage"])
    assert "install dccp /bin/false\nblacklist dccp\n" in text
    config = baseline.parse_modprobe_config(
        "blacklist dccp\ninstall dccp /bin/false\ninstall usb_storage /bin/false\nalias foo bar\n"
    )
    assert baseline.modules_not_disabled(config, ["dccp", "usb-storage"]) == ["usb_storage"]


def test_the_security_archive_is_next_to_the_main_archive() -> None:
    debian = {"ID": "debian", "VERSION_CODENAME": "bookworm"}
    assert (
        baseline.security_uri("http://deb.debian.org/debian", debian)
        == "http://deb.debian.org/debian-security"
    )
    assert baseline.security_uri("http://mirror.example/pub/debian", debian) == (
        "http://mirror.example/pub/debian-security"
    )
    ubuntu = {"ID": "ubuntu", "VERSION_CODENAME": "noble"}
    assert (
        baseline.security_uri("http://archive.ubuntu.com/ubuntu", ubuntu)
        == "http://archive.ubuntu.com/ubuntu"
    )
    assert baseline.security_suite(debian) == "bookworm-security"


def test_aide_watches_the_declared_paths_and_the_tls_directory() -> None:
    text = baseline.render_aide(SETTINGS)
    assert "/etc/ssh HvsuiteRule" in text and "/etc/passwd HvsuiteRule" in text
    assert f"{ALPHA.tls.cert_dir} HvsuiteRule" in text
    assert "database_out=file:/var/lib/aide/hvsuite.db.new" in text


@pytest.mark.skipif(shutil.which("aide") is None, reason="aide is not installed on this controller")
def test_the_aide_config_passes_aides_own_check(tmp_path: Path) -> None:
    path = tmp_path / "aide.conf"
    path.write_text(baseline.render_aide(SETTINGS))
    result = subprocess.run(
        ["aide", "--config-check", "--config", str(path)], capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_aide_reports_are_parsed() -> None:
    report = (
        "Summary:\n  Total number of entries:\t38\n  Added entries:\t1\n\nf+++++++++++++++++: /etc/ssh/x\n"
    )
    assert baseline.aide_entries(report) == 38
    assert baseline.aide_added(report) == {"/etc/ssh/x"}


def test_the_audit_rules_are_watch_rules_for_every_sensitive_path() -> None:
    text = baseline.render_audit_rules(SETTINGS)
    assert baseline.audit_rule_problems(text) == []
    assert "-w /etc/ssh/sshd_config -p wa -k hvsuite" in text
    assert f"-w {ALPHA.tls.cert_dir} -p wa -k hvsuite" in text
    assert baseline.audit_rule_problems("-w /etc/passwd -p wz -k x\n-a always,exit\n") == [
        "-w /etc/passwd -p wz -k x",
        "-a always,exit",
    ]


def test_pwquality_and_the_banner_come_from_settings() -> None:
    assert "minlen = 14\n" in baseline.render_pwquality(SETTINGS)
    assert baseline.banner_text(SETTINGS).startswith("Authorized access only.")


def test_the_sshd_drop_in_has_the_banner_max_sessions_and_no_tcp_keepalive() -> None:
    text = sshd.render(ALPHA.ssh)
    assert "Banner /etc/issue.net\n" in text
    assert f"MaxSessions {ALPHA.ssh.max_sessions}\n" in text and "TCPKeepAlive no\n" in text
    expected = sshd.expected_effective(ALPHA.ssh)
    assert expected["tcpkeepalive"] == ("no",) and expected["banner"] == ("/etc/issue.net",)


def test_the_jail_is_the_local_jail_file_with_the_suites_settings() -> None:
    text = fail2ban.render(ALPHA.fail2ban, ssh_port=22, controller="10.231.0.1")
    assert fail2ban.JAIL == "/etc/fail2ban/jail.local"
    assert f"maxretry = {ALPHA.fail2ban.maxretry}\n" in text and "bantime.increment = true\n" in text


def test_sandbox_drop_ins_render_and_parse_their_exposure() -> None:
    text = sandbox.render(sandbox.PROFILES["fail2ban.service"])
    assert text.startswith("# Managed by hvsuite") and "\n[Service]\nCapabilityBoundingSet=" in text
    assert set(ALPHA.sandbox_exposure) <= set(sandbox.PROFILES)
    output = "  ✗ UMask= ...\n\n→ Overall exposure level for fail2ban.service: 4.2 OK 🙂\n"
    assert sandbox.parse_exposure(output) == 4.2
    with pytest.raises(ValueError, match=r"is not a \[Service\] setting"):
        sandbox.render({"bad key": "x"})


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not on this controller"
)
def test_sandbox_drop_ins_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "hvs-sandbox-test.service"
    body = sandbox.render(sandbox.PROFILES["fail2ban.service"]).replace("[Service]\n", "")
    unit.write_text(f"[Unit]\nDescription=test\n[Service]\nExecStart=/bin/true\n{body}")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    assert "Unknown key" not in result.stderr and "Invalid" not in result.stderr, result.stderr


def test_chrony_on_scratch_follows_the_fleet_and_never_sets_the_clock() -> None:
    conf = timesync.render([], ["10.231.0.5"], clock=False)
    assert "server 10.231.0.5 iburst" in conf and "pool" not in conf and "makestep" not in conf
    assert '"-F 1 -x"' in timesync.render_defaults(clock=False)
    served = timesync.render([], [], clock=False, serve_to=["10.231.0.2"])
    assert "local stratum 10\n" in served and "allow 10.231.0.2\n" in served
    production = timesync.render(["2.debian.pool.ntp.org", "ntp.example"], [], clock=True)
    assert "pool 2.debian.pool.ntp.org iburst" in production and "server ntp.example iburst" in production


def test_chrony_tracking_names_its_reference() -> None:
    tracking = timesync.parse_tracking(
        "Reference ID    : 0AE70002 (10.231.0.2)\nStratum         : 11\nLeap status     : Normal\n"
    )
    assert timesync.reference(tracking) == "10.231.0.2"
    assert timesync.reference({"Reference ID": "00000000 ()", "Leap status": "Not synchronised"}) is None


# -- the step on a fake host ------------------------------------------------------------------


def _fresh_host() -> FakeConnection:
    """A host as the scratch image leaves it: nothing of the baseline installed."""
    conn = FakeConnection()
    conn.set_fact(OsRelease(), DEBIAN)
    conn.set_fact(DebPackages(), "openssh-server\t1:9.2\tii \n")
    conn.set_fact(baseline.AptSources(), "http://deb.debian.org/debian bookworm\n")
    conn.respond(
        re.compile(r"systemctl show .*"),
        (0, "LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\n", ""),
    )
    conn.respond(re.compile(r"if \[ -r /proc/sys/.*"), (0, "present\n0\n", ""))
    conn.set_fact(CommandSucceeds(baseline.AUGENRULES_CURRENT), "no\n")
    conn.set_fact(AptListsAge(), "now=100\nnewest=99\n")
    return conn


def _baseline_commands(conn: FakeConnection, profile: str, mode: str = "apply") -> list[str]:
    host = fake_host(conn, mode=mode)  # type: ignore[arg-type]
    applied = hardening.apply(fake_context(host, profile=profile))
    assert applied.changed
    return conn.commands


def test_a_fresh_scratch_server_gets_the_baseline_without_host_wide_changes() -> None:
    conn = _fresh_host()
    commands = _baseline_commands(conn, "scratch")
    installs = [c for c in commands if " install --no-install-recommends " in c]
    assert any(all(p in c for p in baseline.PACKAGES) for c in installs), installs
    assert "systemctl mask -- auditd.service" in commands
    # The security source is proven by apt update, and removed again if that fails.
    assert any(
        c.startswith("if ! ( for attempt") and "rm -f -- /etc/apt/sources.list.d/" in c for c in commands
    )
    assert (
        conn.files[baseline.SECURITY_SOURCE]
        .decode()
        .endswith("deb http://deb.debian.org/debian-security bookworm-security main\n")
    )
    assert "augenrules" in commands and "augenrules --load" not in commands
    assert not any("fs.suid_dumpable" in c for c in commands)
    assert b"install dccp /bin/false" in conn.files[baseline.MODPROBE_CONF]
    assert any(c.startswith("install -d -m 0700 /var/lib/aide && aide --config") for c in commands)


def test_production_sets_the_host_wide_items() -> None:
    conn = _fresh_host()
    conn.set_fact(Sysctl("fs.suid_dumpable"), "present\n2\n")
    commands = _baseline_commands(conn, "production")
    assert "sysctl -w fs.suid_dumpable=0" in commands
    assert "augenrules --load" in commands and "systemctl mask -- auditd.service" not in commands


def test_check_mode_runs_no_change() -> None:
    conn = _fresh_host()
    host = fake_host(conn, mode="check")
    assert hardening.apply(fake_context(host, profile="scratch")).changed
    assert conn.uploads == []
    changing = ("apt-get -q -y", "systemctl mask", "augenrules", "aide --config", "sysctl -w", "mv -f")
    assert not [c for c in conn.commands if any(word in c for word in changing) and not c.startswith("if ")]


def test_an_existing_security_source_is_left_alone() -> None:
    conn = FakeConnection()
    conn.set_fact(OsRelease(), DEBIAN)
    conn.set_fact(
        baseline.AptSources(),
        "http://deb.debian.org/debian bookworm\n"
        "http://security.debian.org/debian-security bookworm-security\n",
    )
    result = baseline.security_updates(fake_host(conn), SETTINGS)
    assert not result.changed and "already fetches bookworm-security" in result.reason


def test_a_converged_sandbox_changes_nothing() -> None:
    text = sandbox.render(sandbox.PROFILES["acct.service"]).encode()
    path = sandbox.dropin_path("acct.service")
    conn = FakeConnection(files={path: text})
    conn.set_fact(FileInfo(path), "regular file|root|root|644|10\n")
    conn.set_fact(FileInfo(path.rsplit("/", 1)[0]), "directory|root|root|755|4096\n")
    conn.set_fact(ServiceState("acct.service"), "LoadState=loaded\nNeedDaemonReload=no\n")
    assert not sandbox.sandbox(fake_host(conn), "acct.service", sandbox.PROFILES["acct.service"]).changed
