"""Team Charlie-2's alert rules as data: the project's rule file passes `promtool check rules`,
its unit tests (`promtool test rules`) pass, and the file the step installs (each alert's `for:`
from the settings) is checked the same way. promtool comes from Debian's prometheus package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from apply.runner import ApplyError
from settings.loader import load_settings
from steps.charlie2 import alerting

RULES = Path(alerting.__file__).parent / "rules"
# The alerts the team's page and the phase's docstring promise.
PROMISED = {
    "HostDown",
    "DiskFillingUp",
    "DiskFullSoon",
    "ContainerdDown",
    "FlintlockDown",
    "KubeAPIServerDown",
    "EtcdNoQuorum",
    "BackupTooOld",
    "VirtualIPNotHeld",
    "CertificateExpiresSoon",
}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing on the controller: apt-get install --no-install-recommends prometheus"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_the_rule_file_passes_promtool_check_rules() -> None:
    result = promtool("check", "rules", "alerts.yml", cwd=RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", "tests/alerts_test.yml", cwd=RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_promised_alert_is_declared_and_unit_tested() -> None:
    assert set(alerting.alert_names()) >= PROMISED
    tests = yaml.safe_load((RULES / "tests" / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")
    }
    assert set(alerting.alert_names()) <= fired, "an alert no unit test makes fire"


def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path) -> None:
    # The unit tests hold the rules: HostDown on the wrong job no longer fires.
    (tmp_path / "tests").mkdir()
    text = (RULES / "alerts.yml").read_text().replace('up{job="node"} == 0', 'up{job="nodes"} == 0')
    (tmp_path / "alerts.yml").write_text(text)
    shutil.copy(RULES / "tests" / "alerts_test.yml", tmp_path / "tests")
    result = promtool("test", "rules", "tests/alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "HostDown" in result.stdout + result.stderr


def test_the_installed_file_takes_for_from_the_settings_and_passes_promtool(tmp_path: Path) -> None:
    charlie2 = load_settings(None, {"charlie2": {"rules": {"alert_for": {"HostDown": "10s"}}}}).charlie2
    rendered = alerting.render_rules(charlie2)
    (tmp_path / "alerts.yml").write_text(rendered)
    result = promtool("check", "rules", "alerts.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = {rule["alert"]: rule for group in yaml.safe_load(rendered)["groups"] for rule in group["rules"]}
    assert rules["HostDown"]["for"] == "10s"
    assert rules["EtcdNoQuorum"]["for"] == "1m"  # untouched: the rule file's own


def test_the_scratch_config_shortens_the_drills_alert() -> None:
    assert load_settings().charlie2.rules.alert_for == {"HostDown": "10s"}


def test_an_alert_the_rule_file_lacks_is_refused() -> None:
    charlie2 = load_settings(None, {"charlie2": {"rules": {"alert_for": {"HostGone": "1m"}}}}).charlie2
    with pytest.raises(
        ApplyError, match=r"alert_for names HostGone, which rules/alerts.yml does not declare"
    ):
        alerting.render_rules(charlie2)
