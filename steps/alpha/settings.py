"""The settings of Team Alpha (the config's [alpha] section): TLS, the firewall, SSH hardening, the
host baseline, fail2ban."""

from __future__ import annotations

import posixpath
import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from settings.base import CIDR, Role, Strict, TeamSettings


class TLSSettings(Strict):
    cert_dir: str = "/etc/flintlock/certs"
    ca_days: int = Field(3650, ge=30)
    cert_days: int = Field(365, ge=7)
    # Re-issue the server certificate when it expires within this many days.
    renew_before_days: int = Field(30, ge=1)
    key_type: Literal["rsa4096", "ec-p256"] = "ec-p256"
    # Names or IPs added to the server certificate's SANs (hostname and the IP of the
    # default route are always in).
    extra_sans: list[str] = []
    # Mutual TLS: flintlockd accepts only clients with a certificate from the suite's CA
    # (a client certificate is issued next to the server's for the operator and CAPI).
    client_auth: bool = True

    @model_validator(mode="after")
    def _renew_window(self) -> TLSSettings:
        if self.renew_before_days >= self.cert_days:
            raise ValueError(
                f"alpha.tls.renew_before_days ({self.renew_before_days}) must be below cert_days "
                f"({self.cert_days}), or every run re-issues the certificate"
            )
        return self


class SSHHardening(Strict):
    # dev-sec ssh-hardening's modern set, limited to what OpenSSH 9.2 (Debian 12) and
    # 9.6 (Ubuntu 24.04) both offer.
    kex: list[str] = [
        "sntrup761x25519-sha512@openssh.com",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group18-sha512",
        "diffie-hellman-group-exchange-sha256",
    ]
    ciphers: list[str] = [
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-ctr",
        "aes192-ctr",
        "aes128-ctr",
    ]
    macs: list[str] = [
        "hmac-sha2-512-etm@openssh.com",
        "hmac-sha2-256-etm@openssh.com",
        "umac-128-etm@openssh.com",
    ]
    host_key_types: list[Literal["ed25519", "rsa", "ecdsa"]] = Field(["ed25519", "rsa"], min_length=1)
    permit_root_login: Literal["prohibit-password", "no"] = "prohibit-password"
    # dev-sec disables TCP forwarding; an operator tunnelling to a dashboard turns it on.
    allow_tcp_forwarding: bool = False
    login_grace_time: int = Field(30, ge=5, le=600)
    max_auth_tries: int = Field(3, ge=1, le=10)
    # With TCPKeepAlive off (a spoofable TCP keepalive no longer holds a session open), these
    # encrypted keepalives detect a dead session: interval x count_max seconds.
    client_alive_interval: int = Field(300, ge=1)
    client_alive_count_max: int = Field(2, ge=1)
    # Sessions (channels) per connection. Measured: the suite's own connections hold one SFTP
    # session and one command channel at a time; sshd frees a session only once both sides
    # closed its channel, which can still be in flight when the next command's channel opens:
    # 3 is the lowest value its concurrency works with (docs/teams/alpha.md).
    max_sessions: int = Field(3, ge=1, le=64)


class Fail2banSettings(Strict):
    maxretry: int = Field(5, ge=1)
    findtime: str = Field("10m", pattern=r"^\d+[smhd]?$")
    bantime: str = Field("1h", pattern=r"^\d+[smhd]?$")
    # Never ban these (the operator's own network), as CIDRs.
    ignoreip: list[CIDR] = []
    # Also never ban the address the suite manages the host from (read from the SSH
    # session): a run's own probes must not lock the suite out for bantime.
    ignore_controller: bool = True
    # A repeat offender's ban grows (bantime x 2 per ban), up to this long.
    bantime_maxtime: str = Field("1w", pattern=r"^\d+[smhdw]?$")


_MODULE = re.compile(r"[a-z0-9_-]+")
_PWQUALITY_KEYS = {
    "difok", "minlen", "dcredit", "ucredit", "lcredit", "ocredit", "minclass", "maxrepeat",
    "maxsequence", "maxclassrepeat", "gecoscheck", "dictcheck", "usercheck", "usersubstr",
    "enforcing", "retry", "enforce_for_root", "local_users_only",
}  # fmt: skip


class LoginDefs(Strict):
    """/etc/login.defs: defaults for accounts created from now on (root's existing entry,
    with its key login, is not touched: its password never expires)."""

    umask: str = Field("027", pattern=r"^0?[0-7]{3}$")
    sha_crypt_min_rounds: int = Field(5000, ge=1000, le=999_999_999)
    sha_crypt_max_rounds: int = Field(50000, ge=1000, le=999_999_999)
    pass_max_days: int = Field(365, ge=1, le=99999)
    pass_min_days: int = Field(1, ge=0)
    pass_warn_age: int = Field(7, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> LoginDefs:
        if self.sha_crypt_min_rounds > self.sha_crypt_max_rounds:
            raise ValueError(
                f"alpha.login_defs.sha_crypt_min_rounds ({self.sha_crypt_min_rounds}) is above "
                f"sha_crypt_max_rounds ({self.sha_crypt_max_rounds}); lower it or raise the maximum"
            )
        if self.pass_min_days >= self.pass_max_days or self.pass_warn_age >= self.pass_max_days:
            raise ValueError(
                "alpha.login_defs: pass_min_days and pass_warn_age must be below pass_max_days "
                f"({self.pass_max_days}); lower them or raise pass_max_days"
            )
        return self


class SecurityUpdates(Strict):
    """The distribution's security suite as an apt source (unattended-upgrades' default
    origin is that suite: without the source it has nothing to install)."""

    enabled: bool = True
    # The archive that serves the security suite. None: the host's own main archive with its
    # path replaced by /debian-security (Debian) or the same archive (Ubuntu), so the host
    # reaches it the way it reaches the archive it already uses.
    uri: str | None = Field(None, pattern=r"^https?://[^\s]+$")


class IntegritySettings(Strict):
    """AIDE's scope: only these paths (files, or directories with everything below), so the
    database initialises in seconds."""

    paths: list[str] = [
        "/etc/ssh",
        "/etc/pam.d",
        "/etc/security",
        "/etc/sudoers",
        "/etc/sudoers.d",
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/etc/gshadow",
        "/etc/login.defs",
        "/etc/modprobe.d",
        "/etc/audit",
        "/usr/local/sbin",
    ]
    # A check (aide --check) over that scope must finish within this many seconds.
    check_seconds: int = Field(60, ge=5, le=1800)

    @field_validator("paths")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        bad = [p for p in paths if not p.startswith("/") or posixpath.normpath(p) != p or p == "/"]
        if bad:
            raise ValueError(
                f"alpha.integrity.paths: {', '.join(map(repr, bad))} must be absolute, normalised "
                "paths below / (write them like /etc/ssh)"
            )
        if not paths:
            raise ValueError("alpha.integrity.paths is empty: name at least one path AIDE watches")
        return paths


class TimeSettings(Strict):
    """chrony: the NTP servers the primary follows."""

    # Pool names or servers (chrony "pool" for a name with "pool" in it, else "server").
    servers: list[str] = ["2.debian.pool.ntp.org"]
    # A host of this role in the run's fleet serves its own clock to the primary (chrony's
    # "local" reference): for a fleet that must reach no public NTP server (scratch).
    fleet_source_role: Role | None = None

    @field_validator("servers")
    @classmethod
    def _names(cls, servers: list[str]) -> list[str]:
        bad = [s for s in servers if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.:-]*", s)]
        if bad:
            raise ValueError(
                f"alpha.time.servers: {', '.join(map(repr, bad))} are not host names or addresses"
            )
        return servers

    @model_validator(mode="after")
    def _some_source(self) -> TimeSettings:
        if not self.servers and self.fleet_source_role is None:
            raise ValueError(
                "alpha.time: servers is empty and no fleet_source_role is set: chrony would have no "
                'time source; name NTP servers or a fleet role (fleet_source_role = "probe")'
            )
        return self


class AlphaSettings(TeamSettings):
    section: ClassVar[str] = "alpha"

    tls: TLSSettings = TLSSettings()
    ssh: SSHHardening = SSHHardening()
    fail2ban: Fail2banSettings = Fail2banSettings()
    # Dead man's switch for SSH and firewall changes: the host restores the previous
    # configuration after this many seconds unless a new login was proven.
    guard_seconds: int = Field(120, ge=30, le=1800)
    # unattended-upgrades with apt's periodic timers (security updates only).
    unattended_upgrades: bool = True
    # The legal banner shown before login (/etc/issue, /etc/issue.net and SSH's Banner).
    banner: str = (
        "Authorized access only. This system is monitored; activity may be logged and "
        "disclosed to authorities. Disconnect now if you are not an authorized user."
    )
    login_defs: LoginDefs = LoginDefs()
    # Kernel modules that must not load: rare network protocols, USB and FireWire storage.
    disabled_modules: list[str] = [
        "dccp",
        "sctp",
        "rds",
        "tipc",
        "usb-storage",
        "uas",
        "firewire-core",
        "firewire-ohci",
        "firewire-sbp2",
    ]
    security_updates: SecurityUpdates = SecurityUpdates()
    # /etc/security/pwquality.conf.d: what a new password must be.
    pwquality: dict[str, int] = {
        "minlen": 14,
        "minclass": 4,
        "maxrepeat": 3,
        "dictcheck": 1,
        "usercheck": 1,
        "enforcing": 1,
        "enforce_for_root": 1,
    }
    integrity: IntegritySettings = IntegritySettings()
    # auditd watches these paths for writes and attribute changes (the TLS directory is
    # always added): the sensitive files the suite manages.
    audit_paths: list[str] = [
        "/etc/ssh/sshd_config",
        "/etc/ssh/sshd_config.d",
        "/etc/sudoers",
        "/etc/sudoers.d",
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/etc/gshadow",
        "/etc/nftables.conf",
        "/etc/nftables.d",
        "/etc/fail2ban",
    ]
    time: TimeSettings = TimeSettings()
    # systemd-analyze security: the highest exposure each sandboxed unit may have (0 safest,
    # 10 unsafe). Each unit gets the sandbox it tolerates (steps/alpha/sandbox.py).
    # Measured on Debian 12 (systemd 252): fail2ban 2.6, chrony 3.1, acct 3.0.
    sandbox_exposure: dict[str, float] = {
        "fail2ban.service": 3.0,
        "chrony.service": 3.5,
        "acct.service": 3.5,
    }
    # Network sysctls an auditor expects (all namespaced net.*).
    sysctls: dict[str, str] = {
        "net.ipv4.conf.all.rp_filter": "1",
        "net.ipv4.conf.default.rp_filter": "1",
        "net.ipv4.conf.all.accept_redirects": "0",
        "net.ipv4.conf.default.accept_redirects": "0",
        "net.ipv4.conf.all.send_redirects": "0",
        "net.ipv4.conf.default.send_redirects": "0",
        "net.ipv4.conf.all.accept_source_route": "0",
        "net.ipv4.conf.default.accept_source_route": "0",
        "net.ipv4.conf.all.log_martians": "1",
        "net.ipv4.tcp_syncookies": "1",
        "net.ipv4.icmp_echo_ignore_broadcasts": "1",
        "net.ipv6.conf.all.accept_redirects": "0",
        "net.ipv6.conf.default.accept_redirects": "0",
        "net.ipv6.conf.all.accept_source_route": "0",
    }

    @field_validator("banner")
    @classmethod
    def _banner(cls, text: str) -> str:
        # agetty expands backslash escapes in /etc/issue; the banner is plain text.
        if not text.strip() or "\\" in text:
            raise ValueError("alpha.banner must be non-empty plain text without backslashes")
        return text

    @field_validator("disabled_modules")
    @classmethod
    def _modules(cls, names: list[str]) -> list[str]:
        bad = [name for name in names if not _MODULE.fullmatch(name)]
        if bad:
            raise ValueError(
                f"alpha.disabled_modules: {', '.join(map(repr, bad))} are not module names "
                "(write them like usb-storage)"
            )
        return names

    @field_validator("pwquality")
    @classmethod
    def _pwquality(cls, values: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(values) - _PWQUALITY_KEYS)
        if unknown:
            raise ValueError(
                f"alpha.pwquality: {', '.join(unknown)} are not pwquality.conf options "
                f"(known: {', '.join(sorted(_PWQUALITY_KEYS))})"
            )
        return values

    @field_validator("audit_paths")
    @classmethod
    def _audit_paths(cls, paths: list[str]) -> list[str]:
        bad = [p for p in paths if not p.startswith("/") or any(c.isspace() for c in p)]
        if bad:
            raise ValueError(
                f"alpha.audit_paths: {', '.join(map(repr, bad))} must be absolute paths without spaces"
            )
        return paths

    @field_validator("sandbox_exposure")
    @classmethod
    def _exposure(cls, bounds: dict[str, float]) -> dict[str, float]:
        bad = [f"{unit}={bound}" for unit, bound in bounds.items() if not 0 <= bound <= 10]
        bad += [unit for unit in bounds if not re.fullmatch(r"[A-Za-z0-9@._-]+\.service", unit)]
        if bad:
            raise ValueError(
                f"alpha.sandbox_exposure: {', '.join(bad)}: keys are service units "
                "(fail2ban.service), values exposure bounds from 0 to 10"
            )
        return bounds
