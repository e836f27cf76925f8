import re
from pathlib import Path

import pytest
from targets.resolve import effective_profile

from settings.loader import DEFAULT_CONFIG, ConfigError, load_settings
from settings.model import Waiver
from targets.spec import ScratchSpec, SSHSpec

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


def test_default_is_scratch() -> None:
    settings = load_settings()
    assert settings.target.kind == "scratch"
    assert settings.profile.waivers == {Waiver.KVM, Waiver.DEVMAPPER, Waiver.UPSTREAM_ARTIFACTS}
    assert load_settings(DEFAULT_CONFIG) == settings


def test_overrides_win_over_the_file() -> None:
    settings = load_settings(None, {"scratch.name": "other-name", "target.profile": "production"})
    assert settings.scratch.name == "other-name"
    assert settings.profile.waivers == frozenset()


@pytest.mark.parametrize(
    ("text", "field", "fix"),
    [
        ('[scratch]\nsubnet = "10.0.0.300/24"\n', "scratch.subnet", "is not a CIDR"),
        ("[ssh]\nport = 70000\n", "ssh.port", "Fix: use a port between 1 and 65535"),
        (
            '[[ports]]\nname = "web"\nteam = "Zulu"\nport = 80\n',
            "ports[0].team",
            "Fix: use a team from plan.toml: Base, Alpha",
        ),
        ('[ssh]\nkey = "/nonexistent/id_ed25519"\n', "ssh.key", "Fix: point ssh.key at the private key"),
        ('[profiles.lab]\nwaivers = ["gpu"]\n', "profiles.lab.waivers", "Fix: use one of: kvm, devmapper"),
        ("[target]\nkinds = 'ssh'\n", "target.kinds", "Fix: remove it or correct its spelling (known keys"),
        ('[target]\nprofile = "nosuch"\n', "target.profile 'nosuch' is not defined", "use one of"),
        ('[target]\nkind = "ssh"\n', "target.url is required", "ssh://user@host:port"),
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
    path = write(tmp_path, '[ssh]\nport = 0\nkey = "/nonexistent"\n[scratch]\nsubnet = "x"\n')
    found = problems(path)
    assert [p.split(": ")[1] for p in found] == ["ssh.port", "scratch.subnet", "ssh.key"]
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
        assert load_settings(example).target.url == "hetzner1"
        return
    found = problems(example)
    assert found, "placeholders must be rejected"
    for message in found:
        assert ".sha256:" in message and "Fix: fill in the sha256 of https://" in message
        assert "never guess" in message


def test_hetzner_example_without_artifacts_is_a_valid_production_target() -> None:
    text = (REPO / "settings" / "hetzner.example.toml").read_text().split("[artifacts.")[0]
    settings = load_settings(None, _as_overrides(text))
    assert settings.target.url == "hetzner1" and settings.profile.waivers == frozenset()


def _as_overrides(text: str) -> dict[str, object]:
    import tomllib

    data = tomllib.loads(text)
    return {f"{section}.{key}": value for section, table in data.items() for key, value in table.items()}


def test_profile_defaults_by_target_kind() -> None:
    default = load_settings()
    assert effective_profile(default, ScratchSpec("x")) == "scratch"
    # `--target ssh://...` with the default config: a real server never inherits scratch's waivers.
    assert effective_profile(default, SSHSpec("h", "root", 22, None)) == "production"
    explicit = load_settings(None, {"target.profile": "scratch"})
    assert effective_profile(explicit, SSHSpec("h", "root", 22, None)) == "scratch"


def test_hetzner_example_is_valid_once_its_checksums_are_filled_in(tmp_path: Path) -> None:
    text = (REPO / "settings" / "hetzner.example.toml").read_text()
    filled = tmp_path / "hetzner.toml"
    filled.write_text(re.sub(r'"FILL-IN-[^"]*"', '"' + "0" * 64 + '"', text))
    settings = load_settings(filled)
    pins = ("firecracker", "cloud-hypervisor", "flintlockd", "microvm-kernel", "microvm-rootfs", "grafana")
    for name in pins:
        assert settings.artifacts[name].url.startswith("https://"), name
