"""Outside-in probes run from the controller (or any machine): a bounded TCP port scan, the
SSH server's offered authentication methods and algorithms, and a TLS handshake.

Probes never log in successfully, never send a password that could be real, and only talk
to the one address they are given. Every probe is bounded in count and time.

Also the small helpers checks use on the target itself through a testinfra host (anything
with ``run``, ``run_expect`` and ``check_output``): reading a fact independently of the
runner's cache, and a throwaway listener the firewall must drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shlex
import socket
import ssl
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import paramiko

from apply.facts import Fact
from apply.poll import eventually
from transport.ssh import Endpoint, handshake, key_login

T = TypeVar("T")


# High ports services commonly leave open by accident (Docker, etcd, Kubernetes, Grafana,
# Prometheus, databases, dev servers). Scanned in addition to 1-1024 and the declared ports.
WELL_KNOWN_HIGH_PORTS: tuple[int, ...] = (
    1080, 1433, 2049, 2375, 2376, 2379, 2380, 3000, 3306, 3389, 4000, 5000, 5432, 5900, 6379,
    6443, 8000, 8080, 8081, 8443, 8888, 9000, 9090, 9093, 9100, 9200, 10250, 10255, 10256,
    11211, 27017, 50051,
)  # fmt: skip

# A scan is refused beyond this many ports: a probe, not a sweep.
MAX_SCAN_PORTS = 2048


@dataclass(frozen=True)
class ScanResult:
    address: str
    scanned: int
    open: frozenset[int]
    # Connection refused (a host that answers: nothing listens or a reject rule).
    refused: frozenset[int]
    # No answer within the timeout (dropped by a firewall).
    filtered: frozenset[int]
    duration: float


def scan_ports(
    address: str,
    ports: Iterable[int],
    *,
    timeout: float = 1.0,
    concurrency: int = 128,
    deadline: float = 120.0,
    via: Any = None,
) -> ScanResult:
    """TCP connect scan of ``ports`` on ``address`` only, ``concurrency`` at a time, from the
    controller, or with ``via`` (a ``apply.runner.Host``) from that host: what a machine that
    is not the controller can reach.

    Raises ValueError for an empty or oversized port list and TimeoutError when the whole
    scan exceeds ``deadline`` seconds.
    """
    wanted = _bounded(ports, concurrency)
    if via is not None:
        return _scan_from(via, address, wanted, timeout, concurrency, deadline)
    return asyncio.run(_scan(address, wanted, timeout, concurrency, deadline))


def _bounded(ports: Iterable[int], concurrency: int) -> list[int]:
    """The sorted ports of a scan, refused with ValueError beyond the probe's bounds."""
    wanted = sorted(set(ports))
    if not wanted:
        raise ValueError("scan_ports: no ports to scan")
    if len(wanted) > MAX_SCAN_PORTS:
        raise ValueError(f"scan_ports: {len(wanted)} ports exceeds the bound of {MAX_SCAN_PORTS}")
    if any(not 1 <= port <= 65535 for port in wanted):
        raise ValueError("scan_ports: ports must be within 1-65535")
    if not 1 <= concurrency <= 512:
        raise ValueError("scan_ports: concurrency must be within 1-512")
    return wanted


async def _scan(
    address: str, ports: list[int], timeout: float, concurrency: int, deadline: float
) -> ScanResult:
    gate = asyncio.Semaphore(concurrency)
    states: dict[int, str] = {}

    async def probe(port: int) -> None:
        async with gate:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
            except ConnectionRefusedError:
                states[port] = "refused"
            except (TimeoutError, OSError):
                states[port] = "filtered"
            else:
                states[port] = "open"
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(probe(port) for port in ports)), deadline)
    by_state = {
        state: frozenset(p for p, s in states.items() if s == state)
        for state in ("open", "refused", "filtered")
    }
    return ScanResult(
        address,
        len(ports),
        by_state["open"],
        by_state["refused"],
        by_state["filtered"],
        time.monotonic() - started,
    )


# The same connect scan, run by python3 on another host (the probe role): arguments as JSON
# on stdin, port states as JSON on stdout.
_REMOTE_SCAN = """
import asyncio, json, sys, time
args = json.load(sys.stdin)
async def main():
    gate = asyncio.Semaphore(args["concurrency"])
    states = {}
    async def probe(port):
        async with gate:
            try:
                connecting = asyncio.open_connection(args["address"], port)
                _, writer = await asyncio.wait_for(connecting, args["timeout"])
            except ConnectionRefusedError:
                states[port] = "refused"
            except (asyncio.TimeoutError, OSError):
                states[port] = "filtered"
            else:
                states[port] = "open"
                writer.close()
    await asyncio.wait_for(asyncio.gather(*(probe(p) for p in args["ports"])), args["deadline"])
    return states
started = time.monotonic()
states = asyncio.run(main())
print(json.dumps({"states": states, "seconds": time.monotonic() - started}))
"""


def _scan_from(
    remote: Any, address: str, wanted: list[int], timeout: float, concurrency: int, deadline: float
) -> ScanResult:
    import json

    request = {
        "address": address,
        "ports": wanted,
        "timeout": timeout,
        "concurrency": concurrency,
        "deadline": deadline,
    }
    result = remote.run(
        f"python3 -c {shlex.quote(_REMOTE_SCAN)}", stdin=json.dumps(request), timeout=deadline + 30
    )
    answer = json.loads(result.stdout)
    states = {int(port): state for port, state in answer["states"].items()}
    return ScanResult(
        address,
        len(wanted),
        *(frozenset(p for p, s in states.items() if s == state) for state in ("open", "refused", "filtered")),
        float(answer["seconds"]),
    )


def scan_plan(declared: Iterable[int], *, low_range: range = range(1, 1025)) -> list[int]:
    """The bounded port list of an outside-in check: 1-1024, every declared port, and the
    well-known high ports."""
    return sorted(set(low_range) | set(declared) | set(WELL_KNOWN_HIGH_PORTS))


# -- SSH ---------------------------------------------------------------------------------
# Every probe that completes a key exchange checks the server's host key against the
# endpoint's trust (transport.hostkeys.KnownHosts), passed explicitly.


def ssh_auth_methods(endpoint: Endpoint, *, timeout: float = 10.0) -> list[str]:
    """Authentication methods the server offers the endpoint's user (the answer to a
    "none" request). Nothing secret is sent: the "none" method carries no credential."""
    with handshake(endpoint, timeout=timeout) as transport:
        try:
            transport.auth_none(endpoint.user)
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        # "none" succeeded: the server lets anyone in without a credential.
        return ["none"]


def ssh_password_login_refused(endpoint: Endpoint, *, timeout: float = 10.0) -> str:
    """Try a password login with a random throwaway password; return how it was refused.

    "not offered" when the server rejects the method itself (the strong outcome), or
    "rejected" when it took the password and said no. Raises AssertionError if it let us in.
    """
    throwaway = hashlib.sha256(str(time.time_ns()).encode()).hexdigest()
    with handshake(endpoint, timeout=timeout) as transport:
        try:
            transport.auth_password(endpoint.user, throwaway, fallback=False)
        except paramiko.BadAuthenticationType:
            return "not offered"
        except paramiko.AuthenticationException:
            return "rejected"
        raise AssertionError(f"password login as {endpoint.user!r} on {endpoint.url} succeeded")


def ssh_key_login(endpoint: Endpoint, *, timeout: float = 10.0) -> str:
    """Log in with the endpoint's key over a brand-new connection; ``id -un`` (proves access)."""
    return key_login(endpoint, timeout=timeout)


@dataclass(frozen=True)
class SSHAlgorithms:
    banner: str
    kex: tuple[str, ...]
    host_key: tuple[str, ...]
    ciphers: tuple[str, ...]
    macs: tuple[str, ...]


# Pseudo-algorithms OpenSSH lists in KEXINIT to signal extensions, not key exchanges.
KEX_PSEUDO = ("ext-info-s", "ext-info-c", "kex-strict-s-v00@openssh.com", "kex-strict-c-v00@openssh.com")


def ssh_algorithms(address: str, port: int, *, timeout: float = 10.0) -> SSHAlgorithms:
    """What the server offers in its (unencrypted) KEXINIT, as ssh-audit reads it."""
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        reader = sock.makefile("rb")
        banner = ""
        # RFC 4253 4.2: the server may send other lines before its identification string.
        for _ in range(32):
            line = reader.readline(256).decode("ascii", "replace").strip()
            if line.startswith("SSH-"):
                banner = line
                break
        if not banner:
            raise ValueError(f"{address}:{port} sent no SSH identification string")
        sock.sendall(b"SSH-2.0-hvsuite_probe\r\n")
        header = _read_exact(reader, 5)
        packet_length, padding_length = struct.unpack(">IB", header)
        if not 0 < packet_length < 65536:
            raise ValueError(f"{address}:{port} sent an implausible packet length {packet_length}")
        payload = _read_exact(reader, packet_length - 1)[: packet_length - 1 - padding_length]
    return parse_kexinit(banner, payload)


def _read_exact(reader, size: int) -> bytes:  # type: ignore[no-untyped-def]
    data = reader.read(size)
    if data is None or len(data) != size:
        raise ValueError("connection closed during the SSH key exchange")
    return data


def parse_kexinit(banner: str, payload: bytes) -> SSHAlgorithms:
    """Parse an SSH_MSG_KEXINIT payload (RFC 4253 7.1): byte 20, 16 bytes cookie, name-lists."""
    if not payload or payload[0] != 20:
        raise ValueError("first packet is not SSH_MSG_KEXINIT")
    offset = 17
    lists: list[tuple[str, ...]] = []
    for _ in range(10):
        (length,) = struct.unpack(">I", payload[offset : offset + 4])
        offset += 4
        names = payload[offset : offset + length].decode("ascii")
        offset += length
        lists.append(tuple(name for name in names.split(",") if name))
    kex = tuple(name for name in lists[0] if name not in KEX_PSEUDO)
    # Lists 2/3 are ciphers client->server / server->client, 4/5 the MACs; report their union.
    ciphers = tuple(dict.fromkeys(lists[2] + lists[3]))
    macs = tuple(dict.fromkeys(lists[4] + lists[5]))
    return SSHAlgorithms(banner, kex, lists[1], ciphers, macs)


# -- TLS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSHandshake:
    version: str
    cipher: str
    # The leaf certificate the server presented, DER-encoded.
    certificate_der: bytes
    # The application protocol negotiated with ALPN ("h2" for gRPC), if any.
    alpn: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.certificate_der).hexdigest()


def tls_handshake(
    address: str,
    port: int,
    *,
    server_name: str | None = None,
    ca_pem: str | None = None,
    timeout: float = 10.0,
) -> TLSHandshake:
    """Complete a TLS handshake and return the certificate the server presented.

    With ``ca_pem`` the chain and ``server_name`` are verified against that CA; without it
    the certificate is only fetched (to compare its fingerprint with the issued one).
    A server that demands a client certificate may end the handshake after sending its
    own; the presented certificate is still returned.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
        context.check_hostname = server_name is not None
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    # gRPC speaks HTTP/2; offering it keeps servers that insist on ALPN talking.
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((address, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=server_name or address) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        if der is None:
            raise ValueError(f"{address}:{port} presented no certificate")
        cipher = tls.cipher()
        return TLSHandshake(
            tls.version() or "", cipher[0] if cipher else "", der, tls.selected_alpn_protocol()
        )


# -- on the target, for checks (a testinfra host) --------------------------------------------


def read_fact(host: Any, fact: Fact[T]) -> T:
    """``fact`` read afresh through a testinfra host: what the target says now, not the
    runner's cached view that the apply steps acted on."""
    result = host.run(fact.command)
    if result.rc not in fact.ok_exit_codes:
        raise AssertionError(f"{fact.command!r} exited {result.rc}: {result.stderr.strip()}")
    return fact.parse(result.stdout)


@contextlib.contextmanager
def temporary_listener(
    host: Any,
    port: int,
    *,
    unit: str = "hvsuite-undeclared-listener",
    timeout: float = 5.0,
    directory: str = "/",
) -> Iterator[int]:
    """A throwaway HTTP server on ``0.0.0.0:port`` of the target serving ``directory`` (a
    transient systemd unit), listening before it is yielded and stopped afterwards. Raises
    TimeoutError if it does not listen within ``timeout`` seconds (a check against it would
    prove nothing)."""
    quoted = shlex.quote(unit)
    host.run_expect(
        [0],
        f"systemd-run --quiet --collect --unit={quoted} "
        f"python3 -m http.server --bind 0.0.0.0 --directory {shlex.quote(directory)} {port}",
    )
    try:
        deadline = time.monotonic() + timeout
        while f":{port} " not in host.check_output("ss -tlnH"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} {timeout:.0f} s after starting {unit}")
            time.sleep(0.1)
        yield port
    finally:
        host.run(f"systemctl stop {quoted}")


# Streams zeros to address:port from a thread and measures, over ``seconds``, the bytes the
# host's interface ``device`` delivers (after ``after`` bytes have passed it: a token bucket
# lets its burst through first); without a device, the bytes the socket accepts.
_STEADY_RATE = """
import socket, sys, threading, time
address, port, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
after, seconds = int(sys.argv[4]), float(sys.argv[5])
deadline = time.monotonic() + 60
while True:
    try:
        sock = socket.create_connection((address, port), timeout=30)
        break
    except ConnectionRefusedError:
        # The sink takes one stream at a time, and takes a moment to listen again after one.
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
sent = [0]
def pump():
    chunk = bytes(1 << 16)
    try:
        while True:
            sock.sendall(chunk)
            sent[0] += len(chunk)
    except OSError:
        pass
threading.Thread(target=pump, daemon=True).start()
def delivered():
    if device == "-":
        return sent[0]
    with open("/sys/class/net/%s/statistics/tx_bytes" % device) as counter:
        return int(counter.read())
start, deadline = delivered(), time.monotonic() + 120
while delivered() - start < after and time.monotonic() < deadline:
    time.sleep(0.1)
t0, b0 = time.monotonic(), delivered()
time.sleep(seconds)
t1, b1 = time.monotonic(), delivered()
sock.close()
print((b1 - b0) * 8 / (t1 - t0))
"""


def steady_rate(
    host: Any, address: str, port: int, *, device: str = "-", after: int = 0, seconds: float = 4.0
) -> float:
    """bit/s the target delivers to ``address:port`` through its interface ``device`` (the
    socket's own count without one), measured over ``seconds`` once ``after`` bytes passed."""
    script = shlex.quote(_STEADY_RATE)
    return float(host.check_output(f"python3 -c {script} {address} {port} {device} {after} {seconds}"))


def service_programmed(host: Any, cluster_ip: str, *, timeout: float = 60.0) -> bool:
    """Whether kube-proxy has programmed ``cluster_ip`` on the target (within ``timeout``):
    until then, traffic to it goes wherever the default route leads."""
    rule = f"-d {cluster_ip}/32"
    found = eventually(
        lambda: host.run("iptables -t nat -S KUBE-SERVICES").stdout,
        lambda rules: rule in rules,
        timeout=timeout,
    )
    return rule in found
