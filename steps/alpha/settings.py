"""The settings of Team Alpha (the config's [alpha] section): TLS, the firewall, SSH hardening, the
host baseline, fail2ban."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from settings.base import CIDR, Strict, TeamSettings


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
    client_alive_interval: int = Field(300, ge=0)
    client_alive_count_max: int = Field(2, ge=0)


class Fail2banSettings(Strict):
    maxretry: int = Field(5, ge=1)
    findtime: str = Field("10m", pattern=r"^\d+[smhd]?$")
    bantime: str = Field("1h", pattern=r"^\d+[smhd]?$")
    # Never ban these (the operator's own network), as CIDRs.
    ignoreip: list[CIDR] = []
    # Also never ban the address the suite manages the host from (read from the SSH
    # session): a run's own probes must not lock the suite out for bantime.
    ignore_controller: bool = True


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
