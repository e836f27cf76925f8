"""Every op as data: fact states in, expected commands out; nothing when in the desired
state; check mode records a diff and runs nothing; verify mode reads nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from apply import ops
from apply.facts import AptListsAge, CommandSucceeds, DebPackages, FileInfo, ServiceState, Sysctl
from apply.runner import ApplyError, Host, Mode
from apply.testing import FakeConnection, fake_host

APT = ops.APT_GET
FILE_644 = "regular file|root|root|644|{size}\n"


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "locks"


def make(
    lock_dir: Path, mode: Mode = "apply", files: dict[str, bytes] | None = None
) -> tuple[Host, FakeConnection]:
    conn = FakeConnection(files=files)
    return fake_host(conn, lock_dir=lock_dir, mode=mode), conn


def changes(conn: FakeConnection, *facts: object) -> list[str]:
    return conn.changing_commands(facts)  # type: ignore[arg-type]


# -- packages ---------------------------------------------------------------------------


def test_packages_installs_only_missing_in_one_command_with_fresh_cache(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(DebPackages(), "curl\t7.88\tii \n")
    conn.set_fact(AptListsAge(), "now=1000\nnewest=900\n")
    result = ops.packages(host, ["jq", "curl", "nftables"])
    assert changes(conn, DebPackages(), AptListsAge()) == [
        f"{APT} install --no-install-recommends jq nftables"
    ]
    assert result.changed


@pytest.mark.parametrize("lists", ["now=1000\nnewest=\n", f"now={10**6}\nnewest=1\n"])
def test_packages_updates_missing_or_stale_cache(lock_dir: Path, lists: str) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(DebPackages(), "")
    conn.set_fact(AptListsAge(), lists)
    ops.packages(host, ["jq"])
    assert changes(conn, DebPackages(), AptListsAge()) == [
        ops.apt_update_command(),
        f"{APT} install --no-install-recommends jq",
    ]


def test_packages_command_runs_apt_get_unattended(lock_dir: Path, tmp_path: Path) -> None:
    """The install command as issued, run by a shell against a stand-in apt-get: it must get
    the non-interactive frontend in its environment and each option as its own argument."""
    host, conn = make(lock_dir)
    conn.set_fact(DebPackages(), "")
    conn.set_fact(AptListsAge(), "now=1000\nnewest=900\n")
    ops.packages(host, ["jq"])
    [install] = changes(conn, DebPackages(), AptListsAge())
    record = tmp_path / "apt-get.argv"
    stand_in = tmp_path / "bin" / "apt-get"
    stand_in.parent.mkdir()
    stand_in.write_text(f'#!/bin/sh\nprintf "%s\\n" "frontend=$DEBIAN_FRONTEND" "$@" > {record}\n')
    stand_in.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "DEBIAN_FRONTEND"}
    env["PATH"] = f"{stand_in.parent}:{env['PATH']}"
    subprocess.run(["sh", "-c", install], env=env, stdin=subprocess.DEVNULL, check=True)
    frontend, *argv = record.read_text().splitlines()
    assert frontend == "frontend=noninteractive"
    assert argv[-3:] == ["install", "--no-install-recommends", "jq"] and "-y" in argv
    options = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "-o"]
    # Waits for dpkg's lock (unattended-upgrades) instead of failing; never asks about a conffile.
    assert "DPkg::Lock::Timeout=600" in options
    assert {"Dpkg::Options::=--force-confdef", "Dpkg::Options::=--force-confold"} <= set(options)


@pytest.mark.parametrize(
    ("outcomes", "status", "calls"),
    [
        (["locked", "locked", "ok"], 0, 3),
        (["locked"] * 5, 100, 3),
        (["broken", "ok"], 100, 1),
    ],
    ids=["waits-for-the-lists-lock", "gives-up-after-its-bound", "other-errors-fail-at-once"],
)
def test_apt_update_waits_only_for_the_lists_lock(
    tmp_path: Path, outcomes: list[str], status: int, calls: int
) -> None:
    # A stand-in apt-get answering each update with the next outcome, as apt 2.6 prints it.
    answers = tmp_path / "answers"
    answers.write_text("\n".join(outcomes) + "\n")
    stand_in = tmp_path / "bin" / "apt-get"
    stand_in.parent.mkdir()
    stand_in.write_text(
        "#!/bin/sh\n"
        f'answer=$(head -n1 {answers}); sed -i 1d {answers}; echo "$answer" >> {tmp_path}/calls\n'
        'case "$answer" in\n'
        "  ok) exit 0;;\n"
        '  locked) echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 157"\n'
        "          exit 100;;\n"
        '  *) echo "E: The repository is not signed."; exit 100;;\n'
        "esac\n"
    )
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{stand_in.parent}:{os.environ['PATH']}"}
    command = ops.apt_update_command(attempts=3, poll=0)
    done = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == status, done.stderr
    assert (tmp_path / "calls").read_text().split() == outcomes[:calls]
    if status:
        assert "E: " in done.stderr


def test_packages_in_desired_state_runs_nothing_and_skips_cache_age(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(DebPackages(), "jq\t1.6\tii \n")
    result = ops.packages(host, ["jq"])
    assert not result.changed and conn.commands == [DebPackages().command]


def test_packages_version_pin(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(DebPackages(), "jq\t1.6\tii \n")
    conn.set_fact(AptListsAge(), "now=1\nnewest=1\n")
    ops.packages(host, ["jq=1.7"])
    assert changes(conn, DebPackages(), AptListsAge()) == [f"{APT} install --no-install-recommends jq=1.7"]


def test_packages_absent(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(DebPackages(), "telnet\t1\tii \n")
    ops.packages(host, ["telnet", "rsh-server"], present=False)
    assert changes(conn, DebPackages()) == [f"{APT} remove telnet"]


def test_packages_rejects_bad_names(lock_dir: Path) -> None:
    with pytest.raises(ValueError, match="'jq; reboot' is not a Debian package name"):
        ops.packages(make(lock_dir)[0], ["jq; reboot"])


def test_packages_hold_the_apt_lock(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(DebPackages(), "")
    seen: list[bool] = []

    def during_install(command: str) -> tuple[int, str, str]:
        lock = host._locks["apt"]
        seen.append(lock.is_locked)
        return 0, "", ""

    conn.set_fact(AptListsAge(), "now=1\nnewest=1\n")
    conn.respond(f"{APT} install --no-install-recommends jq", during_install)
    ops.packages(host, ["jq"])
    assert seen == [True]


# -- files ------------------------------------------------------------------------------


def test_file_new(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    result = ops.file(host, "/etc/motd", "hello\n", mode="0640", group="adm")
    assert conn.files["/etc/motd"] == b"hello\n"
    assert "chown root:adm /etc/.motd.hvs-tmp1 && chmod 0640 /etc/.motd.hvs-tmp1" in conn.commands
    assert result.changed and result.diff is not None and "--- /dev/null" in result.diff


def test_file_in_desired_state(lock_dir: Path) -> None:
    host, conn = make(lock_dir, files={"/etc/motd": b"hello\n"})
    conn.set_fact(FileInfo("/etc/motd"), FILE_644.format(size=6))
    result = ops.file(host, "/etc/motd", "hello\n")
    assert not result.changed and changes(conn, FileInfo("/etc/motd")) == []


def test_file_only_metadata_differs(lock_dir: Path) -> None:
    host, conn = make(lock_dir, files={"/etc/motd": b"hello\n"})
    conn.set_fact(FileInfo("/etc/motd"), "regular file|daemon|root|666|6\n")
    ops.file(host, "/etc/motd", "hello\n", mode="0644")
    assert changes(conn, FileInfo("/etc/motd")) == ["chown root:root -- /etc/motd", "chmod 0644 -- /etc/motd"]
    assert conn.uploads == []


def test_file_check_mode_shows_diff_and_changes_nothing(lock_dir: Path) -> None:
    host, conn = make(lock_dir, mode="check", files={"/etc/motd": b"a\nb\n"})
    conn.set_fact(FileInfo("/etc/motd"), FILE_644.format(size=4))
    result = ops.file(host, "/etc/motd", "a\nc\n")
    assert result.changed
    assert result.diff == "--- a/etc/motd\n+++ b/etc/motd\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
    assert changes(conn, FileInfo("/etc/motd")) == [] and conn.uploads == []
    assert conn.files == {"/etc/motd": b"a\nb\n"}


def test_file_sensitive_diff_is_hidden(lock_dir: Path) -> None:
    host, _ = make(lock_dir, mode="check")
    result = ops.file(host, "/etc/key", "PRIVATE", mode="0600", sensitive=True)
    assert result.diff is not None and "PRIVATE" not in result.diff


def test_file_diff_is_redacted(lock_dir: Path) -> None:
    host, _ = make(lock_dir, mode="check")
    result = ops.file(host, "/etc/app.env", "password=swordfish1\n")
    assert result.diff is not None and "swordfish1" not in result.diff


def test_file_validate_runs_against_temp_file(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    ops.file(host, "/etc/ssh/sshd_config", "Port 22\n", validate="sshd -t -f {path}")
    assert "sshd -t -f /etc/ssh/.sshd_config.hvs-tmp1" in conn.commands
    assert conn.commands[-1] == "mv -f -- /etc/ssh/.sshd_config.hvs-tmp1 /etc/ssh/sshd_config"


def test_file_over_a_directory_is_an_error(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(FileInfo("/etc/x"), "directory|root|root|755|4096\n")
    with pytest.raises(ApplyError, match="/etc/x is a directory, not a regular file"):
        ops.file(host, "/etc/x", "data")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"mode": "644x"}, "file mode"), ({"owner": "root;x"}, "owner"), ({"path": "etc/x"}, "absolute")],
)
def test_file_rejects_bad_arguments(lock_dir: Path, kwargs: dict[str, str], message: str) -> None:
    args = {"path": "/etc/x", **kwargs}
    path = args.pop("path")
    with pytest.raises(ValueError, match=message):
        ops.file(make(lock_dir)[0], path, "x", **args)


def test_template_renders_strictly(lock_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "app.conf.j2"
    source.write_text("port = {{ port }}\n")
    host, conn = make(lock_dir)
    ops.template(host, "/etc/app.conf", source, {"port": 9090}, mode="0600")
    assert conn.files["/etc/app.conf"] == b"port = 9090\n"
    with pytest.raises(ValueError, match="'port' is undefined"):
        ops.template(host, "/etc/app.conf", source, {})
    with pytest.raises(ValueError, match="not found"):
        ops.render(tmp_path / "no-such-template.j2")


# -- line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, kwargs, new",
    [
        (b"a\nb\n", {"text": "c"}, b"a\nb\nc\n"),
        (b"#PermitRootLogin yes\nX\n", {"text": "PermitRootLogin no", "regex": r"^#?PermitRootLogin"}, None),
        (b"a\nb\na\n", {"text": "a", "present": False}, b"b\n"),
        (b"Port 22\nPort 2222\n", {"text": "Port 22", "regex": r"^Port "}, b"Port 22\n"),
    ],
)
def test_line_edits(lock_dir: Path, old: bytes, kwargs: dict[str, object], new: bytes | None) -> None:
    host, conn = make(lock_dir, files={"/etc/f": old})
    conn.set_fact(FileInfo("/etc/f"), "regular file|root|root|600|1\n")
    result = ops.line(host, "/etc/f", **kwargs)  # type: ignore[arg-type]
    expected = new if new is not None else b"PermitRootLogin no\nX\n"
    assert conn.files["/etc/f"] == expected and result.changed
    # Mode and owner are kept from the existing file.
    assert any("chmod 0600" in command for command in conn.commands)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"text": "b"},
        {"text": "PermitRootLogin no", "regex": "^PermitRootLogin"},
        {"text": "z", "present": False},
    ],
)
def test_line_already_in_desired_state(lock_dir: Path, kwargs: dict[str, object]) -> None:
    host, conn = make(lock_dir, files={"/etc/f": b"a\nb\nPermitRootLogin no"})
    conn.set_fact(FileInfo("/etc/f"), "regular file|root|root|644|1\n")
    result = ops.line(host, "/etc/f", **kwargs)  # type: ignore[arg-type]
    assert not result.changed and conn.uploads == []


def test_line_absent_from_missing_file(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    assert not ops.line(host, "/etc/f", "x", present=False).changed
    assert conn.uploads == []


def test_line_rejects_newline(lock_dir: Path) -> None:
    with pytest.raises(ValueError, match="newline"):
        ops.line(make(lock_dir)[0], "/etc/f", "a\nb")


# -- directory, absent ------------------------------------------------------------------


def test_directory_created(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    ops.directory(host, "/var/lib/app", owner="app", group="app", mode="0750")
    assert changes(conn, FileInfo("/var/lib/app")) == [
        "mkdir -p -- /var/lib/app",
        "chown app:app -- /var/lib/app",
        "chmod 0750 -- /var/lib/app",
    ]


def test_directory_fixes_mode_only(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(FileInfo("/d"), "directory|root|root|777|4096\n")
    ops.directory(host, "/d")
    assert changes(conn, FileInfo("/d")) == ["chmod 0755 -- /d"]


def test_directory_in_desired_state(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(FileInfo("/d"), "directory|root|root|755|4096\n")
    assert not ops.directory(host, "/d").changed


def test_absent(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    assert not ops.absent(host, "/etc/gone").changed
    conn.set_fact(FileInfo("/etc/f"), FILE_644.format(size=1))
    ops.absent(host, "/etc/f")
    conn.set_fact(FileInfo("/srv/d"), "directory|root|root|755|1\n")
    with pytest.raises(ApplyError, match="recursive=True"):
        ops.absent(host, "/srv/d")
    ops.absent(host, "/srv/d", recursive=True)
    assert changes(conn, FileInfo("/etc/gone"), FileInfo("/etc/f"), FileInfo("/srv/d")) == [
        "rm -f -- /etc/f",
        "rm -rf -- /srv/d",
    ]
    with pytest.raises(ValueError, match="refusing"):
        ops.absent(host, "/")


# -- services ---------------------------------------------------------------------------


def _unit(load: str = "loaded", active: str = "active", file: str = "enabled", reload: str = "no") -> str:
    return f"LoadState={load}\nActiveState={active}\nUnitFileState={file}\nNeedDaemonReload={reload}\n"


START, STOP = "systemctl start -- nft", "systemctl stop -- nft"


@pytest.mark.parametrize(
    "state, kwargs, expected",
    [
        (_unit(), {}, []),
        (
            _unit(active="inactive", file="disabled"),
            {},
            ["systemctl enable -- nft", "systemctl start -- nft"],
        ),
        (_unit(), {"restart": True}, ["systemctl restart -- nft"]),
        (_unit(active="inactive"), {"restart": True}, ["systemctl start -- nft"]),
        (_unit(), {"reload": True}, ["systemctl reload-or-restart -- nft"]),
        (
            _unit(),
            {"enabled": False, "running": False},
            ["systemctl disable -- nft", "systemctl stop -- nft"],
        ),
        (_unit(file="static", active="failed"), {}, ["systemctl start -- nft"]),
        (_unit(reload="yes"), {}, ["systemctl daemon-reload"]),
        (_unit(active="inactive"), {"running": None}, []),
    ],
)
def test_service(lock_dir: Path, state: str, kwargs: dict[str, object], expected: list[str]) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(ServiceState("nft"), state)
    result = ops.service(host, "nft", **kwargs)  # type: ignore[arg-type]
    assert changes(conn, ServiceState("nft")) == expected
    assert result.changed == bool(expected)


def test_service_missing_unit(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(ServiceState("ghost"), _unit(load="not-found", active="inactive", file=""))
    with pytest.raises(ApplyError, match="unit ghost not found"):
        ops.service(host, "ghost")
    check, check_conn = make(lock_dir, mode="check")
    check_conn.set_fact(ServiceState("ghost"), _unit(load="not-found", active="inactive", file=""))
    result = ops.service(check, "ghost")
    assert result.changed and "not present yet" in result.reason


def test_daemon_reload(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(ServiceState("a"), _unit())
    assert not ops.daemon_reload(host, units=["a"]).changed
    assert ops.daemon_reload(host, force=True).changed
    conn.set_fact(ServiceState("b"), _unit(reload="yes"))
    assert ops.daemon_reload(host, units=["b"]).changed
    assert changes(conn, ServiceState("a"), ServiceState("b")) == ["systemctl daemon-reload"] * 2


# -- sysctls ----------------------------------------------------------------------------


def test_sysctls(lock_dir: Path) -> None:
    conf = "/etc/sysctl.d/90-alpha.conf"
    host, conn = make(lock_dir)
    conn.set_fact(Sysctl("net.ipv4.ip_forward"), "present\n0\n")
    conn.set_fact(Sysctl("net.ipv4.tcp_syncookies"), "present\n1\n")
    values = {"net.ipv4.tcp_syncookies": 1, "net.ipv4.ip_forward": "1"}
    result = ops.sysctls(host, values, persist_file=conf)
    assert "sysctl -w net.ipv4.ip_forward=1" in conn.commands
    assert not any("tcp_syncookies=" in command for command in conn.commands)
    assert (
        conn.files[conf] == b"# Managed by hvsuite.\nnet.ipv4.ip_forward = 1\nnet.ipv4.tcp_syncookies = 1\n"
    )
    assert result.changed

    # Second run: live values and file as desired -> nothing.
    again, conn2 = make(lock_dir, files={conf: conn.files[conf]})
    conn2.set_fact(Sysctl("net.ipv4.ip_forward"), "present\n1\n")
    conn2.set_fact(Sysctl("net.ipv4.tcp_syncookies"), "present\n1\n")
    conn2.set_fact(FileInfo(conf), FILE_644.format(size=10))
    assert not ops.sysctls(
        again, {"net.ipv4.tcp_syncookies": 1, "net.ipv4.ip_forward": "1"}, persist_file=conf
    ).changed


def test_sysctls_unknown_key(lock_dir: Path) -> None:
    host, _ = make(lock_dir)
    with pytest.raises(ApplyError, match=r"sysctl net\.nope does not exist"):
        ops.sysctls(host, {"net.nope": "1"})


# -- command ----------------------------------------------------------------------------


def test_command_creates(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(FileInfo("/etc/ca.pem"), FILE_644.format(size=1))
    result = ops.command(host, "make-ca", creates="/etc/ca.pem")
    assert not result.changed and "exists" in result.reason
    assert changes(conn, FileInfo("/etc/ca.pem")) == []
    assert ops.command(host, "make-key", creates="/etc/key.pem").changed
    assert conn.commands[-1] == "make-key"


def test_command_unless(lock_dir: Path) -> None:
    host, conn = make(lock_dir)
    conn.set_fact(CommandSucceeds("nft list table inet hvs"), "yes\n")
    assert not ops.command(host, "nft -f /etc/hvs.nft", unless="nft list table inet hvs").changed
    conn.set_fact(CommandSucceeds("nft list table inet hvs"), "no\n")
    host.invalidate_facts()
    assert ops.command(host, "nft -f /etc/hvs.nft", unless="nft list table inet hvs", lock="firewall").changed


def test_command_without_guard_says_it_cannot_settle(lock_dir: Path) -> None:
    host, _ = make(lock_dir)
    result = ops.command(host, "echo hi")
    assert result.changed and "runs every time" in result.reason


def test_command_secrets_are_masked_in_results(lock_dir: Path) -> None:
    host, _ = make(lock_dir, mode="check")
    result = ops.command(host, "login --key abcdef123", secrets=["abcdef123"], name="login")
    assert "abcdef123" not in str(result)


# -- modes across every op --------------------------------------------------------------

EVERY_OP = [
    lambda h: ops.packages(h, ["jq"]),
    lambda h: ops.file(h, "/etc/a", "x"),
    lambda h: ops.line(h, "/etc/a", "x"),
    lambda h: ops.directory(h, "/d"),
    lambda h: ops.absent(h, "/d", recursive=True),
    lambda h: ops.service(h, "ssh"),
    lambda h: ops.daemon_reload(h, force=True),
    lambda h: ops.sysctls(h, {"net.ipv4.ip_forward": 1}),
    lambda h: ops.command(h, "true", creates="/x"),
]


@pytest.mark.parametrize("op", EVERY_OP)
def test_verify_mode_reads_nothing(lock_dir: Path, op) -> None:  # type: ignore[no-untyped-def]
    host, conn = make(lock_dir, mode="verify")
    result = op(host)
    assert not result.changed and result.reason == "verify-only"
    assert conn.commands == [] and conn.uploads == []


def test_check_mode_runs_nothing_that_changes(lock_dir: Path) -> None:
    host, conn = make(lock_dir, mode="check")
    conn.set_fact(DebPackages(), "")
    conn.set_fact(AptListsAge(), "now=1\nnewest=\n")
    conn.set_fact(ServiceState("ssh"), _unit(active="inactive", file="disabled"))
    conn.set_fact(Sysctl("net.ipv4.ip_forward"), "present\n0\n")
    conn.set_fact(FileInfo("/d"), "directory|root|root|700|1\n")
    results = [op(host) for op in EVERY_OP]
    assert all(result.changed for result in results)
    reads = {
        DebPackages().command,
        AptListsAge().command,
        ServiceState("ssh").command,
        Sysctl("net.ipv4.ip_forward").command,
    } | {FileInfo(p).command for p in ("/etc/a", "/d", "/x", "/etc/sysctl.d/90-hvsuite.conf")}
    assert set(conn.commands) <= reads
    assert conn.uploads == []
    assert len(host.changes) == len(EVERY_OP)
