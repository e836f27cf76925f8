"""TLS for the flintlock gRPC API: a private CA, a server certificate and (for mutual TLS)
a client certificate, issued on the target with openssl.

Keys are generated on the target and never leave it (nothing secret crosses the SSH
channel or reaches a log); certificates are public and are read back to decide what to
do. A certificate is (re)issued when it is missing, not signed by the current CA, lacks a
wanted SAN, does not match its key, or expires within ``renew_before_days``. New files are
written beside the old ones and moved into place only when complete.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from apply import ops
from apply.api import Context, step
from apply.facts import Fact, FileInfo
from apply.runner import ApplyError, Host, OpResult
from settings.model import Settings
from steps.alpha.settings import TLSSettings
from steps.base import flintlock

CA_NAME = "hvsuite flintlock CA"
CLIENT_NAME = "hvsuite-operator"


@dataclass(frozen=True)
class Paths:
    directory: str

    def cert(self, role: str) -> str:
        return f"{self.directory}/{role}.pem"

    def key(self, role: str) -> str:
        return f"{self.directory}/{role}-key.pem"

    @property
    def openssl_config(self) -> str:
        return f"{self.directory}/openssl-hvsuite.cnf"


@dataclass(frozen=True)
class HostIdentity(Fact[tuple[str, str, str]]):
    """(short hostname, FQDN, source IPv4 of the default route)."""

    @property
    def command(self) -> str:
        # `ip route get` only consults the routing table; nothing is sent to 192.0.2.1.
        return (
            "hostname; hostname -f 2>/dev/null || hostname; "
            "ip -o -4 route get 192.0.2.1 2>/dev/null | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'"
        )

    def parse(self, output: str) -> tuple[str, str, str]:
        lines = [line.strip() for line in output.splitlines()] + ["", "", ""]
        if not lines[0]:
            raise ValueError("hostname printed nothing")
        return lines[0], lines[1] or lines[0], lines[2]


@dataclass(frozen=True)
class PublicKeyOf(Fact[str | None]):
    """The public key (PEM) of a private key file, or None if the file is absent."""

    path: str

    @property
    def command(self) -> str:
        q = shlex.quote(self.path)
        return f"if [ -f {q} ]; then openssl pkey -in {q} -pubout; fi"

    def parse(self, output: str) -> str | None:
        return output.strip() or None


def wanted_sans(identity: tuple[str, str, str], tls: TLSSettings, extra: Sequence[str] = ()) -> list[str]:
    """The server certificate's SANs: hostname, FQDN, default-route IP, configured extras."""
    short, fqdn, address = identity
    names = [short, fqdn, address, *tls.extra_sans, *extra, "localhost", "127.0.0.1"]
    return list(dict.fromkeys(name for name in names if name))


def san_entries(names: Sequence[str]) -> list[str]:
    entries = []
    for name in names:
        try:
            entries.append(f"IP:{ipaddress.ip_address(name)}")
        except ValueError:
            entries.append(f"DNS:{name}")
    return entries


def cert_sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)
    }


def extended_key_usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier] | None:
    """The certificate's extended key usages in order; None without the extension."""
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding (what a TLS client sees on the wire)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def days_left(cert: x509.Certificate, now: dt.datetime | None = None) -> int:
    """Whole days until the certificate expires (negative once expired)."""
    return (cert.not_valid_after_utc - (now or dt.datetime.now(dt.UTC))).days


def verify_command(paths: Paths, role: str) -> str:
    """Exits 0 when the ``role`` certificate chains to the CA (openssl on the target)."""
    return f"openssl verify -CAfile {shlex.quote(paths.cert('ca'))} {shlex.quote(paths.cert(role))}"


def public_pem(cert: x509.Certificate) -> str:
    return (
        cert.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        .strip()
    )


def parse_cert(data: bytes) -> x509.Certificate:
    """A PEM certificate; ValueError when ``data`` is empty or not one."""
    if not data:
        raise ValueError("no certificate data")
    return x509.load_pem_x509_certificate(data)


def load_cert(data: bytes | None) -> x509.Certificate | None:
    """Like ``parse_cert``, but None for a missing or unreadable certificate."""
    try:
        return parse_cert(data or b"")
    except ValueError:
        return None


def _remaining_days(cert: x509.Certificate, now: dt.datetime) -> float:
    return (cert.not_valid_after_utc - now).total_seconds() / 86400


def ca_problems(
    ca: x509.Certificate | None, key_public: str | None, tls: TLSSettings, now: dt.datetime
) -> list[str]:
    """Why the CA must be (re)created; empty when it is fine."""
    if ca is None:
        return ["no CA certificate"]
    problems = []
    if key_public is None:
        problems.append("CA key missing")
    elif key_public != public_pem(ca):
        problems.append("CA key does not match the CA certificate")
    try:
        if not ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            problems.append("CA certificate is not a CA")
    except x509.ExtensionNotFound:
        problems.append("CA certificate has no basicConstraints")
    if _remaining_days(ca, now) < tls.renew_before_days:
        problems.append(f"CA expires in {_remaining_days(ca, now):.0f} days")
    return problems


def leaf_problems(
    leaf: x509.Certificate | None,
    key_public: str | None,
    ca: x509.Certificate | None,
    sans: Sequence[str],
    usage: x509.ObjectIdentifier,
    tls: TLSSettings,
    now: dt.datetime,
) -> list[str]:
    """Why a server/client certificate must be (re)issued; empty when it is fine."""
    if leaf is None:
        return ["no certificate"]
    problems = []
    if key_public is None:
        problems.append("key missing")
    elif key_public != public_pem(leaf):
        problems.append("key does not match the certificate")
    if ca is None:
        problems.append("no CA to check the signature")
    else:
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            problems.append(f"not issued by the current CA ({type(exc).__name__})")
    missing = [name for name in sans if name not in cert_sans(leaf)]
    if missing:
        problems.append(f"SANs missing: {', '.join(missing)}")
    usages = extended_key_usages(leaf)
    if usages is None:
        problems.append("no extended key usage")
    elif usage not in usages:
        problems.append(f"extended key usage lacks {usage._name}")
    days = _remaining_days(leaf, now)
    if days < tls.renew_before_days:
        problems.append(f"expires in {days:.0f} days (renew window {tls.renew_before_days})")
    return problems


def openssl_config(server_sans: Sequence[str]) -> str:
    """Extensions for the CA and the leaf certificates (independent of the distro's openssl.cnf)."""
    return (
        "# Managed by hvsuite (Team Alpha, TLS certificates).\n"
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n"
        "[ca_ext]\nbasicConstraints = critical,CA:TRUE,pathlen:0\n"
        "keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
        "[server_ext]\nbasicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n"
        f"subjectAltName = {','.join(san_entries(server_sans))}\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
        "[client_ext]\nbasicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature\nextendedKeyUsage = clientAuth\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )


def genkey_command(key_type: str, out: str) -> str:
    if key_type == "rsa4096":
        return f"openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out {out}"
    return f"openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {out}"


def issue_ca_command(paths: Paths, tls: TLSSettings) -> str:
    key, cert, cnf = (shlex.quote(p) for p in (paths.key("ca"), paths.cert("ca"), paths.openssl_config))
    return (
        f"set -e; umask 077; {genkey_command(tls.key_type, f'{key}.new')}; "
        f"openssl req -x509 -new -config {cnf} -extensions ca_ext -key {key}.new -sha256 "
        f"-days {tls.ca_days} -subj {shlex.quote(f'/CN={CA_NAME}/O=hvsuite')} -out {cert}.new; "
        f"chmod 0644 {cert}.new; mv -f {key}.new {key}; mv -f {cert}.new {cert}"
    )


def issue_leaf_command(paths: Paths, role: str, subject: str, tls: TLSSettings) -> str:
    key, cert, csr = (
        shlex.quote(p) for p in (paths.key(role), paths.cert(role), f"{paths.directory}/{role}.csr")
    )
    ca_key, ca_cert, cnf = (shlex.quote(p) for p in (paths.key("ca"), paths.cert("ca"), paths.openssl_config))
    serial = shlex.quote(f"{paths.directory}/ca.srl")
    return (
        f"set -e; umask 077; {genkey_command(tls.key_type, f'{key}.new')}; "
        f"openssl req -new -config {cnf} -key {key}.new -subj {shlex.quote(f'/CN={subject}')} -out {csr}; "
        f"openssl x509 -req -in {csr} -CA {ca_cert} -CAkey {ca_key} -CAserial {serial} -CAcreateserial "
        f"-sha256 -days {tls.cert_days} -extfile {cnf} -extensions {role}_ext -out {cert}.new; "
        f"rm -f {csr}; chmod 0644 {cert}.new; mv -f {key}.new {key}; mv -f {cert}.new {cert}"
    )


@step("TLS certificates")
def apply(ctx: Context) -> None:
    """Flintlock's CA, server (and client) certificates, named for the address the controller
    uses too."""
    ensure(ctx.host, ctx.settings.alpha.tls, extra_sans=[ctx.address])


def ensure(
    host: Host,
    tls: TLSSettings,
    *,
    extra_sans: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> list[OpResult]:
    """CA, server (and client) certificates valid, matching and not close to expiry."""
    paths = Paths(tls.cert_dir)
    if host.mode == "verify":
        return [host.unchanged("tls certificates", "verify-only")]
    now = now or dt.datetime.now(dt.UTC)
    sans = wanted_sans(host.fact(HostIdentity()), tls, extra_sans)
    results = [
        ops.packages(host, ["openssl"]),
        ops.directory(host, tls.cert_dir, mode="0755"),
        ops.file(host, paths.openssl_config, openssl_config(sans), mode="0644"),
    ]
    ca = load_cert(host.read(paths.cert("ca")))
    problems = ca_problems(ca, host.fact(PublicKeyOf(paths.key("ca"))), tls, now)
    results.append(
        host.execute(
            "tls CA",
            [issue_ca_command(paths, tls)] if problems else [],
            reason="; ".join(problems) or "CA valid",
        )
    )
    ca = load_cert(host.read(paths.cert("ca"))) if problems else ca
    if host.mode == "apply" and ca is None:
        raise ApplyError(
            f"[{host.name}] the CA certificate {paths.cert('ca')} is unreadable after issuing it"
        )
    roles = [("server", sans[0], sans, ExtendedKeyUsageOID.SERVER_AUTH)]
    if tls.client_auth:
        roles.append(("client", CLIENT_NAME, [], ExtendedKeyUsageOID.CLIENT_AUTH))
    for role, subject, role_sans, usage in roles:
        leaf = load_cert(host.read(paths.cert(role)))
        # A CA issued just now (or only in check mode) makes every leaf stale.
        issues = (["the CA was (re)issued"] if problems else []) + leaf_problems(
            leaf, host.fact(PublicKeyOf(paths.key(role))), ca, role_sans, usage, tls, now
        )
        results.append(
            host.execute(
                f"tls {role} certificate",
                [issue_leaf_command(paths, role, subject, tls)] if issues else [],
                reason="; ".join(dict.fromkeys(issues)) or f"{role} certificate valid",
            )
        )
    for role in ["ca", *(r[0] for r in roles)]:
        # Keys 0600 even if someone loosened them; certificates world-readable.
        results.append(_mode(host, paths.key(role), "0600"))
        results.append(_mode(host, paths.cert(role), "0644"))
    return results


def _mode(host: Host, path: str, mode: str) -> OpResult:
    stat = host.fact(FileInfo(path))
    wrong = stat is not None and (stat.mode != mode or (stat.user, stat.group) != ("root", "root"))
    commands = [f"chown root:root {shlex.quote(path)} && chmod {mode} {shlex.quote(path)}"] if wrong else []
    return host.execute(f"mode {mode} {path}", commands)


def flintlock_problems(exec_start: str, settings: Settings) -> list[str]:
    """What keeps flintlockd's command line (``systemctl show -p ExecStart``) from serving
    exactly the certificates Alpha issues: empty when it serves the server certificate and
    key (and, with client auth, validates clients against the CA) and never ``--insecure``."""
    tls = settings.alpha.tls
    paths = Paths(tls.cert_dir)
    problems = []
    if "--insecure" in exec_start:
        problems.append("--insecure is set")
    wanted = {"--tls-cert": paths.cert("server"), "--tls-key": paths.key("server")}
    if tls.client_auth:
        wanted["--tls-client-ca"] = paths.cert("ca")
        if "--tls-client-validate" not in exec_start.split():
            problems.append("--tls-client-validate is missing (alpha.tls.client_auth is on)")
    for flag, path in wanted.items():
        found = flintlock.exec_flag(exec_start, flag)
        if found != path:
            problems.append(f"{flag} is {found!r}, expected {path!r}")
    return problems
