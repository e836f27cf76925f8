from pathlib import Path

import pytest

from settings.base import Role, Waiver
from settings.loader import DEFAULT_CONFIG, ConfigError, load_settings
from targets import TargetError
from targets.inventory import effective_profile, plan_hosts
from targets.spec import ScratchSpec, SSHSpec
from tests.support.example import filled_example, filled_text

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


def test_default_is_a_scratch_fleet_of_a_host_per_role() -> None:
    settings = load_settings()
    hosts = plan_hosts(settings, None)
    assert [(h.name, h.roles) for h in hosts] == [
        ("hvs-scratch-host1", ("primary",)),
        ("hvs-scratch-probe", ("probe", "bench-peer")),
        ("hvs-scratch-host2", ("control-plane",)),
        ("hvs-scratch-host3", ("control-plane",)),
        ("hvs-scratch-worker1", ("worker",)),
        ("hvs-scratch-backup", ("backup",)),
        ("hvs-scratch-restore", ("restore",)),
        ("hvs-scratch-logs", ("logs",)),
    ]
    assert all(isinstance(h.spec, ScratchSpec) for h in hosts)
    profile = effective_profile(settings, hosts)
    assert profile.name == "scratch"
    assert profile.waivers == {
        Waiver.KVM,
        Waiver.DEVMAPPER,
        Waiver.UPSTREAM_ARTIFACTS,
        Waiver.NETPOL_ENFORCEMENT,
        Waiver.CSI_SNAPSHOTS,
        Waiver.HOST_KERNEL,
    }
    assert load_settings(DEFAULT_CONFIG) == settings


def test_the_default_config_declares_its_ports_and_admins_and_the_probe_is_no_admin() -> None:
    import ipaddress

    settings = load_settings()
    assert {rule.name for rule in settings.ports} >= {"ssh", "prometheus", "node-exporter", "oci-registry"}
    admins = [ipaddress.ip_network(cidr) for cidr in settings.firewall.admin_sources]
    subnet = ipaddress.ip_network(settings.scratch.subnet)
    # The controller (the network's gateway) is an admin; no other address of the subnet is.
    assert any(next(subnet.hosts()) in net for net in admins)
    assert sum(net.num_addresses for net in admins) == 1


def test_overrides_win_over_the_file() -> None:
    settings = load_settings(None, {"scratch.name": "other-name", "target.profile": "production"})
    assert settings.scratch.name == "other-name"
    assert effective_profile(settings, plan_hosts(settings, None)).waivers == frozenset()


@pytest.mark.parametrize(
    ("text", "field", "fix"),
    [
        ('[scratch]\nsubnet = "10.0.0.300/24"\n', "scratch.subnet", "is not a CIDR"),
        ("[ssh]\nport = 70000\n", "ssh.port", "Fix: use a port between 1 and 65535"),
        (
            '[[ports]]\nname = "web"\nteam = "Zulu"\nport = 80\nsources = ["world"]\n',
            "ports[0].team",
            "Fix: use a team from plan.toml: Base, Alpha",
        ),
        ('[ssh]\nkey = "/nonexistent/id_ed25519"\n', "ssh.key", "Fix: point ssh.key at the private key"),
        ('[profiles.lab]\nwaivers = ["gpu"]\n', "profiles.lab.waivers", "Fix: use one of: kvm, devmapper"),
        ("[target]\nkinds = 'ssh'\n", "target.kinds", "Fix: remove it or correct its spelling (known keys"),
        ('[target]\nprofile = "nosuch"\n', "target.profile 'nosuch' is not defined", "use one of"),
        (
            '[[hosts]]\nname = "a"\nroles = ["primary"]\n[[hosts]]\nname = "b"\nroles = ["primary"]\n',
            "hosts: role 'primary' is held by a, b",
            "Fix: correct hosts",
        ),
        (
            '[[hosts]]\nname = "a"\nroles = ["gpu-box"]\n',
            "hosts[0].roles[0]",
            "Fix: correct hosts[0].roles[0]",
        ),
        (
            '[[ports]]\nname = "metrics"\nteam = "Charlie"\nport = 9100\n',
            "firewall.admin_sources is empty, but ports metrics are admin-only",
            'admin_sources = ["203.0.113.0/24"]',
        ),
    ],
)
def test_each_error_names_the_field_and_the_fix(tmp_path: Path, text: str, field: str, fix: str) -> None:
    path = write(tmp_path, text)
    found = problems(path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}: ")
    assert field in found[0]
    assert fix in found[0]


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("not used")
    key.chmod(0o644)
    (message,) = problems(write(tmp_path, f'[ssh]\nkey = "{key}"\n'))
    assert "ssh.key" in message and f"Fix: chmod 600 {key}" in message


def test_all_problems_in_one_error(tmp_path: Path) -> None:
    ports = (
        '[[ports]]\nname = "a"\nteam = "Alpha"\nport = 22\nsources = ["world"]\n'
        '[[ports]]\nname = "b"\nteam = "Alpha"\nport = 22\nsources = ["world"]\n'
    )
    path = write(tmp_path, '[ssh]\nport = 0\nkey = "/nonexistent"\n[scratch]\nsubnet = "x"\n' + ports)
    found = problems(path)
    assert [p.split(": ")[1] for p in found] == ["ssh.port", "scratch.subnet", "ports", "ssh.key"]
    assert "22/tcp is declared by both 'a' and 'b'" in found[2]
    with pytest.raises(ConfigError, match=r"invalid config .*suite.toml:\n  "):
        load_settings(path)


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    (message,) = problems(write(tmp_path, "[ssh\n"))
    assert "not valid TOML" in message and "Fix:" in message
    (message,) = problems(tmp_path / "absent.toml")
    assert "file not found" in message and "Fix:" in message


def test_hetzner_example_names_every_checksum_to_fill_in() -> None:
    example = REPO / "settings" / "hetzner.example.toml"
    text = example.read_text()
    if "FILL-IN" not in text:
        # Checksums filled in: the example must then load as is.
        assert load_settings(example).hosts_with(Role.PRIMARY)[0].ssh == "hetzner1"
        return
    found = problems(example)
    assert found, "placeholders must be rejected"
    for message in found:
        checksum = ".sha256:" in message and "Fix: fill in the sha256 of https://" in message
        host_key = (
            "golf1.backup_server.host_keys" in message
            and "Fix: fill in the Storage Box's host key" in message
        )
        assert (checksum or host_key) and "never guess" in message, message


def test_hetzner_example_without_artifacts_is_a_valid_production_inventory(tmp_path: Path) -> None:
    text = (REPO / "settings" / "hetzner.example.toml").read_text().split("[artifacts.")[0]
    settings = load_settings(write(tmp_path, text))
    hosts = plan_hosts(settings, None)
    assert [(h.name, h.roles) for h in hosts] == [
        ("hetzner1", ("primary",)),
        ("probe1", ("probe", "bench-peer")),
        ("hetzner2", ("control-plane",)),
        ("hetzner3", ("control-plane",)),
        ("worker1", ("worker",)),
        ("storagebox", ("backup",)),
        ("restore1", ("restore",)),
        ("logs1", ("logs",)),
    ]
    assert all(isinstance(h.spec, SSHSpec) for h in hosts)
    assert effective_profile(settings, hosts).waivers == frozenset()


def test_profile_follows_the_primary_host_unless_the_config_names_one() -> None:
    default = load_settings()
    assert effective_profile(default, plan_hosts(default, "scratch:other")).name == "scratch"
    # A real primary host: a real server never inherits scratch's waivers.
    alone = load_settings(None, {"hosts": [{"name": "hv", "roles": ["primary"]}]})
    remote = plan_hosts(alone, "ssh://root@198.51.100.9")
    assert [type(h.spec) for h in remote] == [SSHSpec]
    assert effective_profile(alone, remote).name == "production"
    explicit = load_settings(None, {"target.profile": "scratch", "hosts": alone.model_dump()["hosts"]})
    assert effective_profile(explicit, plan_hosts(explicit, "ssh://root@198.51.100.9")).name == "scratch"


def test_a_real_primary_with_local_scratch_peers_is_refused() -> None:
    with pytest.raises(
        TargetError,
        match=r"hvs-scratch-probe, .*hvs-scratch-logs would be local scratch servers.*\[\[hosts\]\]",
    ):
        plan_hosts(load_settings(), "ssh://root@198.51.100.9")


def test_target_scratch_fleet_renames_every_scratch_server() -> None:
    hosts = plan_hosts(load_settings(), "scratch:lab")
    assert [h.name for h in hosts][:2] == ["lab-host1", "lab-probe"]
    assert all(h.name.startswith("lab-") for h in hosts)


def test_hetzner_example_is_valid_once_its_checksums_are_filled_in(tmp_path: Path) -> None:
    text = (REPO / "settings" / "hetzner.example.toml").read_text()
    filled = tmp_path / "hetzner.toml"
    filled.write_text(filled_text(text))
    settings = load_settings(filled)
    pins = ("firecracker", "cloud-hypervisor", "flintlockd", "microvm-kernel", "microvm-rootfs", "grafana")
    for name in pins:
        assert settings.artifacts[name].url.startswith("https://"), name


def test_a_host_that_is_never_logged_in_to_is_resolved_by_its_address_alone(tmp_path: Path) -> None:
    from targets.inventory import resolve_ssh

    settings = load_settings(filled_example(tmp_path))
    storagebox = next(host for host in plan_hosts(settings, None) if host.name == "storagebox")
    assert storagebox.login is False
    # No key, no host key and no login: nothing answers at that documentation name.
    target = resolve_ssh(settings, storagebox)
    assert (target.address, target.port, target.user, target.roles) == (
        "u123456.your-storagebox.de",
        23,
        "u123456",
        ("backup",),
    )


def test_login_false_needs_an_ssh_url_and_an_unmanaged_backup_host_needs_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hosts\[lab\].login = false, but it has no ssh URL"):
        load_settings(None, {"hosts": [{"name": "lab", "roles": ["primary"], "login": False}]})
    path = tmp_path / "logged-in.toml"
    path.write_text(filled_text().replace("login = false\n", ""))
    with pytest.raises(ConfigError, match=r'must never log in to hosts "storagebox".*set login = false'):
        load_settings(path)
