"""An in-process SSH server on 127.0.0.1 for the suite's own tests (paramiko's server side):
real key exchange, host key and authentication, a few fixed commands, and a way to cut every
connection at once as a network drop would."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import paramiko


class ExecServer:
    """Accepts password or any public key, and runs ``exit N``, ``say OUT ERR N`` (prints OUT,
    ERR on stderr, exits N), ``cat`` (echoes stdin until EOF), ``hang`` (never exits),
    ``hang-once OUT`` (hangs the first time, then prints OUT), ``id -un`` (prints the user
    name) and ``cat /proc/self/sessionid`` (a number per connection); anything else exits 0."""

    def __init__(self) -> None:
        self.key = paramiko.RSAKey.generate(2048)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.sockets: list[socket.socket] = []
        self.commands: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        server = self

        class Interface(paramiko.ServerInterface):
            def get_allowed_auths(self, username: str) -> str:
                return "password,publickey"

            def check_auth_password(self, username: str, password: str) -> int:
                return paramiko.AUTH_SUCCESSFUL

            def check_auth_publickey(self, username: str, key: Any) -> int:
                return paramiko.AUTH_SUCCESSFUL

            def check_channel_request(self, kind: str, chanid: int) -> int:
                return paramiko.OPEN_SUCCEEDED

            def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
                server.commands.append(command.decode())
                threading.Thread(target=_serve, args=(channel, command.decode()), daemon=True).start()
                return True

        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(sock)
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.key)
            self.transports.append(transport)
            try:
                transport.start_server(server=Interface())
            except (paramiko.SSHException, OSError, EOFError):
                # A client that refuses the host key hangs up during the handshake: expected.
                transport.close()

    def drop_connections(self) -> None:
        """Cut every open connection (the listener keeps accepting new ones). shutdown(), not
        only close(): a socket closed while its reader thread blocks in recv stays open."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for transport in self.transports:
            transport.close()

    def close(self) -> None:
        # shutdown() first: close() alone leaves a listener that another thread's accept()
        # blocks on still accepting.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.drop_connections()

    def known_hosts_line(self, name: str | None = None) -> str:
        host = name or f"[127.0.0.1]:{self.port}"
        return f"{host} {self.key.get_name()} {self.key.get_base64()}\n"


_seen: set[str] = set()


def _first_time(command: str) -> bool:
    first = command not in _seen
    _seen.add(command)
    return first


def _serve(channel: Any, command: str) -> None:
    # paramiko sends the exec request's reply after check_channel_exec_request returns:
    # answering before it would close the channel under the client's feet.
    time.sleep(0.05)
    words = command.split()
    if words[0] == "hang" or (words[0] == "hang-once" and _first_time(command)):
        return
    code = 0
    if words[0] == "exit":
        code = int(words[1])
    elif words[0] == "say":
        channel.sendall(words[1].encode())
        channel.sendall_stderr(words[2].encode())
        code = int(words[3])
    elif command == "cat /proc/self/sessionid":
        # A login session per connection, as pam_loginuid gives one.
        channel.sendall(str(id(channel.get_transport()) % 100000).encode())
    elif words[0] == "cat":
        received = bytearray()
        while chunk := channel.recv(65536):
            received += chunk
        channel.sendall(bytes(received))
    elif words[0] == "hang-once":
        channel.sendall(words[1].encode())
    elif words[:2] == ["id", "-un"]:
        channel.sendall(channel.get_transport().get_username().encode() + b"\n")
    channel.send_exit_status(code)
    channel.close()
