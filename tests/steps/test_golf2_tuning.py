"""Team Golf-2's tuning step as data: the settings it accepts, the file it renders (validated
by procps' own parser where the controller has it) and the commands it would run. No SSH."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from apply.facts import AptListsAge, DebPackages, FileInfo, Sysctl
from apply.testing import FakeConnection, fake_context, fake_host
from settings.base import Profile
from settings.loader import load_settings
from settings.model import Settings
from steps.golf2 import benchmarks as tools
from steps.golf2 import tuning
from steps.golf2.settings import FIGURES, Golf2Settings

SETTINGS = load_settings()
GOLF2 = SETTINGS.golf2
SCRATCH = SETTINGS.effective_profile("scratch")
PRODUCTION = SETTINGS.effective_profile("production")
# What a stock Debian 12 kernel reads for each default key.
STOCK = {
    "net.core.somaxconn": "4096",
    "net.ipv4.tcp_max_syn_backlog": "512",
    "net.ipv4.tcp_rmem": "4096\t131072\t6291456",
    "net.ipv4.tcp_wmem": "4096\t16384\t4194304",
    "net.ipv4.tcp_slow_start_after_idle": "1",
    "net.ipv4.tcp_mtu_probing": "0",
    "net.netfilter.nf_conntrack_tcp_timeout_established": "432000",
    "net.core.rmem_max": "212992",
    "net.core.wmem_max": "212992",
    "net.netfilter.nf_conntrack_max": "262144",
    "vm.swappiness": "60",
    "vm.nr_overcommit_hugepages": "0",
    "vm.max_map_count": "65530",
}
VALIDATE = re.compile(r"sysctl --dry-run --load=.*")


def untuned(live: dict[str, str] | None = None) -> FakeConnection:
    conn = FakeConnection()
    for key, value in (live or STOCK).items():
        conn.set_fact(Sysctl(key), f"present\n{value}\n")
    return conn


def tuned(profile_name: str) -> FakeConnection:
    """A host the step has tuned under ``profile_name``."""
    profile = SETTINGS.effective_profile(profile_name)
    live = dict(STOCK)
    live.update(tuning.live_sysctls(GOLF2, profile))
    conn = untuned(live)
    conn.files[tuning.SYSCTL_FILE] = tuning.render_sysctl_file(GOLF2, profile).encode()
    conn.set_fact(FileInfo(tuning.SYSCTL_FILE), "regular file|root|root|644|1\n")
    conn.files[tuning.MODULES_FILE] = b"# Managed by hvsuite (Golf-2).\nnf_conntrack\n"
    conn.set_fact(FileInfo(tuning.MODULES_FILE), "regular file|root|root|644|1\n")
    return conn


def _with(**golf2: object) -> Settings:
    return SETTINGS.model_copy(update={"golf2": Golf2Settings(**golf2)})


# -- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"namespaced_sysctls": {"rmem": "1"}}, r"golf2\.namespaced_sysctls: 'rmem' are not sysctl keys"),
        ({"host_sysctls": {"vm.swappiness": "10\nkernel.x = 1"}}, r"golf2\.host_sysctls: the values of"),
        ({"namespaced_sysctls": {"vm.swappiness": "10"}}, r"not per-network-namespace.*golf2\.host_sysctls"),
        (
            {"namespaced_sysctls": {"net.core.somaxconn": "1"}, "host_sysctls": {"net.core.somaxconn": "2"}},
            r"net\.core\.somaxconn are in both",
        ),
        ({"tolerance_percent": {"cpu": 5.0}}, r"golf2\.tolerance_percent: no tolerance for memory"),
        ({"tolerance_percent": {**dict.fromkeys(FIGURES, 5.0), "gpu": 1.0}}, r"gpu are no figures"),
        ({"tolerance_percent": dict.fromkeys(FIGURES, 95.0)}, r"cpu = 95 is outside 0\.\.90"),
        ({"benchmarks": {"repetitions": 0}}, r"benchmarks\.repetitions"),
        ({"benchmarks": {"disk_size_mib": 100000}}, r"benchmarks\.disk_size_mib"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(values: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Golf2Settings(**values)


def test_a_profile_keeping_to_namespaced_sysctls_must_waive_host_kernel() -> None:
    config = SETTINGS.model_copy(
        update={"profiles": {**SETTINGS.profiles, "shared": Profile(namespaced_sysctls_only=True)}}
    )
    assert GOLF2.problems_with(config) == [
        "profiles.shared: namespaced_sysctls_only keeps golf2.host_sysctls off the host's kernel, "
        'so it must waive "host-kernel": add it to its waivers'
    ]
    assert GOLF2.problems_with(SETTINGS) == []


def test_a_key_alpha_sets_too_is_refused() -> None:
    golf2 = Golf2Settings(namespaced_sysctls={"net.ipv4.tcp_syncookies": "0"})
    assert golf2.problems_with(SETTINGS) == [
        "golf2: net.ipv4.tcp_syncookies are also set by alpha.sysctls; remove them from one of the two"
    ]


# -- rendered file ----------------------------------------------------------------------


def test_scratch_writes_the_host_wide_keys_commented_out() -> None:
    text = tuning.render_sysctl_file(GOLF2, SCRATCH)
    active = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert active == [f"{k} = {v}" for k, v in sorted(GOLF2.namespaced_sysctls.items())]
    for key, value in GOLF2.host_sysctls.items():
        assert f"# {key} = {value}\n" in text
    assert 'profile "scratch" waives host-kernel' in text


def test_production_writes_every_key() -> None:
    text = tuning.render_sysctl_file(GOLF2, PRODUCTION)
    active = {line.split(" = ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert active == set(GOLF2.sysctls())
    assert tuning.last_assignments(f"# {tuning.SYSCTL_FILE}\n{text}") == {
        key: (tuning.SYSCTL_FILE, " ".join(value.split())) for key, value in GOLF2.sysctls().items()
    }


@pytest.mark.skipif(shutil.which("sysctl") is None, reason="procps' sysctl is not installed here")
def test_procps_parses_the_rendered_file_without_writing(tmp_path) -> None:
    # --dry-run parses the file and stats each key in this machine's /proc/sys, writing
    # nothing: it prints exactly the keys this kernel has (conntrack's need nf_conntrack).
    path = tmp_path / "70-hvsuite-golf2.conf"
    path.write_text(tuning.render_sysctl_file(GOLF2, PRODUCTION))
    result = subprocess.run(
        ["sysctl", "--dry-run", f"--load={path}"], capture_output=True, text=True, check=False
    )
    printed = dict(line.split(" = ", 1) for line in result.stdout.splitlines())
    present = {k for k in GOLF2.sysctls() if Path("/proc/sys", *k.split(".")).exists()}
    assert set(printed) == present, result.stderr
    assert all(printed[k] == " ".join(GOLF2.sysctls()[k].split()) for k in printed)


def test_last_assignments_follow_systemd_sysctls_order() -> None:
    merged = (
        "# /usr/lib/sysctl.d/50-default.conf\nnet.core.somaxconn = 128\n-vm.swappiness=30\n"
        f"# {tuning.SYSCTL_FILE}\n# comment\nnet.core.somaxconn = 8192\nnet/ipv4/tcp_rmem = 1  2\t3\n"
        "# /etc/sysctl.d/99-sysctl.conf\n; other\nvm.swappiness = 1\n"
    )
    assert tuning.last_assignments(merged) == {
        "net.core.somaxconn": (tuning.SYSCTL_FILE, "8192"),
        "net.ipv4.tcp_rmem": (tuning.SYSCTL_FILE, "1 2 3"),
        "vm.swappiness": ("/etc/sysctl.d/99-sysctl.conf", "1"),
    }


# -- the step -----------------------------------------------------------------------------


def test_an_untuned_scratch_server_gets_the_namespaced_keys_live_and_the_file() -> None:
    conn = untuned()
    applied = tuning.apply(fake_context(fake_host(conn), profile="scratch"))
    assert applied.changed
    assert conn.uploads[0][1] == tuning.render_sysctl_file(GOLF2, SCRATCH).encode()
    assert any(VALIDATE.fullmatch(c) for c in conn.commands)
    writes = [c for c in conn.commands if c.startswith("sysctl -w")]
    assert writes == [
        f"sysctl -w '{k}={' '.join(v.split())}'" if " " in v else f"sysctl -w {k}={v}"
        for k, v in sorted(GOLF2.namespaced_sysctls.items())
    ]
    # Host-wide keys are validated (read-only), never written, and no module file is written.
    assert tuning.validate_command(GOLF2.host_sysctls) in conn.commands
    assert not any(k in c for c in writes for k in GOLF2.host_sysctls)
    assert tuning.MODULES_FILE not in conn.files


def test_an_untuned_production_host_gets_every_key_and_the_conntrack_module() -> None:
    conn = untuned()
    assert tuning.apply(fake_context(fake_host(conn), profile="production")).changed
    writes = {
        c.removeprefix("sysctl -w ").strip("'").split("=")[0]
        for c in conn.commands
        if c.startswith("sysctl -w")
    }
    assert writes == set(GOLF2.sysctls())
    assert conn.files[tuning.MODULES_FILE].decode().splitlines()[-1] == "nf_conntrack"
    assert conn.files[tuning.SYSCTL_FILE] == tuning.render_sysctl_file(GOLF2, PRODUCTION).encode()


@pytest.mark.parametrize("profile", ["scratch", "production"])
def test_a_tuned_host_is_left_alone(profile: str) -> None:
    conn = tuned(profile)
    applied = tuning.apply(fake_context(fake_host(conn), profile=profile))
    assert not applied.changed
    assert conn.uploads == [] and not any(c.startswith("sysctl -w") for c in conn.commands)


def test_drift_of_one_live_value_is_put_back_alone() -> None:
    conn = tuned("scratch")
    conn.set_fact(Sysctl("net.core.somaxconn"), "present\n4096\n")
    applied = tuning.apply(fake_context(fake_host(conn), profile="scratch"))
    assert [op.op for op in applied.changes] == [
        f"sysctls live: {', '.join(tuning.live_sysctls(GOLF2, SCRATCH))}"
    ]
    assert [c for c in conn.commands if c.startswith("sysctl -w")] == ["sysctl -w net.core.somaxconn=8192"]


def test_check_mode_records_what_would_change_and_runs_nothing() -> None:
    conn = untuned()
    host = fake_host(conn, mode="check")
    assert tuning.apply(fake_context(host, profile="scratch")).changed and host.changes
    assert conn.uploads == [] and not any(c.startswith("sysctl -w") for c in conn.commands)


def test_a_key_this_kernel_lacks_stops_the_step_before_any_change() -> None:
    conn = untuned()
    conn.set_fact(Sysctl("net.core.somaxconn"), "")
    with pytest.raises(Exception, match=r"golf2: net\.core\.somaxconn do not exist on this kernel"):
        tuning.apply(fake_context(fake_host(conn), profile="scratch"))
    assert conn.uploads == [] and not any(c.startswith("sysctl -w") for c in conn.commands)


def test_no_conntrack_key_no_module_file() -> None:
    settings = _with(namespaced_sysctls={"net.core.somaxconn": "8192"}, host_sysctls={"vm.swappiness": "10"})
    conn = untuned()
    tuning.apply(fake_context(fake_host(conn), settings, profile="production"))
    assert tuning.modules(settings.golf2) == [] and tuning.MODULES_FILE not in conn.files


def test_the_tools_are_debian_packages_on_both_hosts(tmp_path) -> None:
    primary, peer = FakeConnection(), FakeConnection()
    for conn in (primary, peer):
        conn.set_fact(DebPackages(), "")
        conn.set_fact(AptListsAge(), "now=1000\nnewest=900\n")
    assert tools.tools(fake_context(fake_host(primary, lock_dir=tmp_path / "primary"))).changed
    assert tools.peer_tools(fake_context(fake_host(peer, lock_dir=tmp_path / "peer"))).changed
    installs = [c for c in primary.commands + peer.commands if "apt-get" in c and " install " in c]
    assert len(installs) == 2
    assert all(p in installs[0] for p in ("sysbench", "fio", "iperf3")) and "iperf3" in installs[1]
