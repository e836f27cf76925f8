"""Team Charlie-2: the fleet's journals, gathered on the logs host.

systemd-journal-remote (Debian's package) on the logs host receives over HTTPS on the port
declared as "journal-remote"; systemd-journal-upload on every host of the fleet that the suite
logs in to sends its journal there as it is written, after checking the server's certificate
against Team Alpha's CA. Every host gets a certificate of that CA: each generates its own key
(it never leaves the host), its certificate request is
signed with the CA on the primary (a random serial, so the CA's files do not change), and the
certificate and the CA certificate are written back. A certificate is issued again when Alpha's
rules say so (missing, another CA, a SAN missing, near expiry: ``steps.alpha.tls.leaf_problems``).
The logs host gets Alpha's firewall, which opens the port to the fleet's hosts only: Debian 12
builds journal-remote without GnuTLS, so it serves TLS but does not check the uploaders'
certificates (its log says "Certificate checking disabled"); the firewall is what keeps other
senders out.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from apply import ops
from apply.api import Context, Step
from apply.runner import ApplyError, Host
from steps.alpha import firewall, tls
from steps.charlie2.settings import JournalSettings

REMOTE = "systemd-journal-remote"
UPLOAD = "systemd-journal-upload"
REMOTE_CONF = "/etc/systemd/journal-remote.conf.d/hvsuite-charlie2.conf"
UPLOAD_CONF = "/etc/systemd/journal-upload.conf.d/hvsuite-charlie2.conf"
# Where journal-remote writes (its unit's --output), one file per sending host.
REMOTE_DIR = "/var/log/journal/remote"
# Who reads each key: journal-remote runs as its own user; journal-upload as a dynamic user
# in the systemd-journal group (their units in Debian's package).
KEY_GROUPS = {"remote": "systemd-journal-remote", "upload": "systemd-journal"}


@dataclass(frozen=True)
class Paths:
    directory: str

    @property
    def ca(self) -> str:
        return f"{self.directory}/ca.pem"

    def cert(self, role: str) -> str:
        return f"{self.directory}/journal-{role}.pem"

    def key(self, role: str) -> str:
        return f"{self.directory}/journal-{role}-key.pem"


def paths(journal: JournalSettings) -> Paths:
    return Paths(journal.cert_dir)


def url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}"


def render_remote_conf(journal: JournalSettings) -> str:
    p = paths(journal)
    return (
        "# Managed by hvsuite (Team Charlie-2): journal-remote serves HTTPS with a certificate of\n"
        "# the suite's CA (the trusted CA is for builds with GnuTLS, which check uploaders by it).\n"
        "[Remote]\nSeal=false\nSplitMode=host\n"
        f"ServerKeyFile={p.key('remote')}\nServerCertificateFile={p.cert('remote')}\n"
        f"TrustedCertificateFile={p.ca}\n"
    )


def render_upload_conf(journal: JournalSettings, target: str) -> str:
    p = paths(journal)
    return (
        "# Managed by hvsuite (Team Charlie-2): this host's journal goes to the logs host.\n"
        f"[Upload]\nURL={target}\n"
        f"ServerKeyFile={p.key('upload')}\nServerCertificateFile={p.cert('upload')}\n"
        f"TrustedCertificateFile={p.ca}\n"
    )


def request_command(key: str, subject: str, sans: Sequence[str], usage: str) -> str:
    """A certificate request for ``key`` carrying the extensions the CA copies into the certificate."""
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if sans:
        extensions.append(f"subjectAltName={','.join(tls.san_entries(sans))}")
    added = " ".join(f"-addext {shlex.quote(extension)}" for extension in extensions)
    return f"openssl req -new -key {shlex.quote(key)} -subj {shlex.quote(f'/CN={subject}')} {added}"


def sign_command(request: str, ca: tls.Paths, days: int, serial: str) -> str:
    """Sign ``request`` with Alpha's CA on the primary, printing the certificate. A random
    serial instead of the CA's serial file, so nothing of the CA changes."""
    return (
        f"printf '%s\\n' {shlex.quote(request.strip())} | openssl x509 -req "
        f"-CA {shlex.quote(ca.cert('ca'))} -CAkey {shlex.quote(ca.key('ca'))} -set_serial 0x{serial} "
        f"-days {days} -sha256 -copy_extensions copyall"
    )


def certificate(
    host: Host,
    primary: Host,
    journal: JournalSettings,
    role: str,
    subject: str,
    sans: Sequence[str],
    tls_settings: tls.TLSSettings,
    now: dt.datetime | None = None,
) -> None:
    """``role``'s ("remote", "upload") key generated on ``host`` and its certificate from
    Alpha's CA on ``primary``, with the CA certificate beside them."""
    now = now or dt.datetime.now(dt.UTC)
    p, ca_paths = paths(journal), tls.Paths(tls_settings.cert_dir)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "remote" else ExtendedKeyUsageOID.CLIENT_AUTH
    key, cert, group = p.key(role), p.cert(role), KEY_GROUPS[role]
    ca_pem = primary.read(ca_paths.cert("ca"))
    if ca_pem is None and primary.mode == "apply":
        raise ApplyError(
            f"[{primary.name}] Alpha's CA {ca_paths.cert('ca')} is missing: run Team Alpha first"
        )
    ops.directory(host, journal.cert_dir, mode="0755")
    ops.file(host, p.ca, ca_pem or b"", mode="0644")
    new_key = shlex.quote(f"{key}.new")
    ops.command(
        host,
        f"set -e; umask 077; {tls.genkey_command(tls_settings.key_type, new_key)}; "
        f"chgrp {group} {new_key}; chmod 0640 {new_key}; mv -f {new_key} {shlex.quote(key)}",
        creates=key,
        name=f"generate the journal {role} key {key}",
    )
    ops.metadata(host, key, group=group, mode="0640")
    problems = tls.leaf_problems(
        tls.load_cert(host.read(cert)),
        host.fact(tls.PublicKeyOf(key)),
        tls.load_cert(ca_pem),
        sans,
        usage,
        tls_settings,
        now,
    )
    op = f"journal {role} certificate {cert}"
    if not problems:
        host.unchanged(op, f"{role} certificate valid")
    elif host.mode != "apply":
        host.execute(
            op, [f"# a request for {key}, signed by the CA on {primary.name}"], reason="; ".join(problems)
        )
    else:
        eku = "serverAuth" if usage == ExtendedKeyUsageOID.SERVER_AUTH else "clientAuth"
        request = host.run(request_command(key, subject, sans, eku)).stdout
        signed = primary.run(
            sign_command(request, ca_paths, tls_settings.cert_days, secrets.token_hex(16))
        ).stdout
        issued = tls.parse_cert(signed.encode())
        if issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value != subject:
            raise ApplyError(
                f"[{primary.name}] the CA signed a certificate for another subject: {issued.subject}"
            )
        ops.file(host, cert, signed, mode="0644")


def server(ctx: Context, primary: Host) -> None:
    """journal-remote serving HTTPS with its certificate, behind Alpha's firewall."""
    host, settings = ctx.host, ctx.settings
    journal = settings.charlie2.journal
    ops.packages(host, [journal.package])
    short, fqdn, _ = host.fact(tls.HostIdentity())
    before = len(host.changes)
    address = logs_address(ctx)
    certificate(host, primary, journal, "remote", short, [short, fqdn, address], settings.alpha.tls)
    ops.directory(host, str(REMOTE_CONF.rsplit("/", 1)[0]))
    ops.file(host, REMOTE_CONF, render_remote_conf(journal))
    changed = len(host.changes) > before
    ops.service(host, f"{REMOTE}.socket", enabled=True, running=True)
    ops.service(host, f"{REMOTE}.service", enabled=None, running=True, restart=changed)


def uploader(ctx: Context, primary: Host, server_address: str) -> None:
    """journal-upload sending this host's journal to the logs host with its certificate."""
    host, settings = ctx.host, ctx.settings
    journal = settings.charlie2.journal
    ops.packages(host, [journal.package])
    short, _, _ = host.fact(tls.HostIdentity())
    before = len(host.changes)
    certificate(host, primary, journal, "upload", short, [], settings.alpha.tls)
    ops.directory(host, str(UPLOAD_CONF.rsplit("/", 1)[0]))
    target = url(server_address, settings.port("Charlie-2", journal.port))
    ops.file(host, UPLOAD_CONF, render_upload_conf(journal, target))
    ops.service(host, f"{UPLOAD}.service", enabled=True, running=True, restart=len(host.changes) > before)


def apply(primary: Context, logs: Context, uploaders: Sequence[Context]) -> None:
    """The logs host (firewall, journal-remote), then an uploader on each of ``uploaders``."""
    firewall.apply(logs)
    Step("Central journal: journal-remote on the logs host", lambda c: server(c, primary.host))(logs)
    address = logs_address(primary)
    for ctx in uploaders:
        Step("Central journal: upload to the logs host", lambda c: uploader(c, primary.host, address))(ctx)


def logs_address(ctx: Context) -> str:
    """The logs host's address, as the inventory gives it (what every uploader connects to)."""
    holders = ctx.peers.get("logs", ())
    if not holders:
        raise ApplyError("no host of the inventory holds the role logs: add one to [[hosts]]")
    return holders[0]
