"""scripts/require-tests: a run that executed no test fails, with a message saying why.

Fed small hand-written JUnit files (zero tests, all skipped, some passed, a missing or
broken file), then the reports a real pytest run writes for the same cases.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "require-tests"


def require_tests(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def junit(tmp_path: Path, cases: str, *, root: str = "testsuites") -> Path:
    body = f'<testsuite name="pytest" tests="0">{cases}</testsuite>'
    path = tmp_path / "junit.xml"
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?><{root}>{body}</{root}>' if root else body)
    return path


def case(name: str, outcome: str = "") -> str:
    return f'<testcase classname="t" name="{name}" time="0.1">{outcome}</testcase>'


PASSED = case("test_ok")
FAILED = case("test_bad", '<failure message="assert 1 == 2">...</failure>')
ERRORED = case("test_setup", '<error message="fixture failed">...</error>')
XFAILED = case("test_known", '<skipped type="pytest.xfail" message="bug 1"/>')


def skipped(name: str, reason: str) -> str:
    return case(name, f'<skipped type="pytest.skip" message="{reason}"/>')


def test_some_passed_and_some_skipped_is_fine(tmp_path: Path) -> None:
    path = junit(tmp_path, PASSED + PASSED + skipped("test_w", "waived: kvm (profile scratch)"))
    result = require_tests(path)
    assert result.returncode == 0, result.stderr
    assert f"{path}: 3 tests, 2 ran, 1 skipped" in result.stdout
    # The last line is the plain "N passed, N failed" closing line.
    assert result.stdout.splitlines()[-1] == "require-tests: 2 passed, 0 failed, 1 skipped"


def test_failures_and_errors_count_as_run(tmp_path: Path) -> None:
    """Whether tests pass is pytest's exit code's business; they ran, which is all this checks."""
    result = require_tests(junit(tmp_path, FAILED + ERRORED + XFAILED))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "require-tests: 1 passed, 2 failed, 0 skipped"


def test_a_bare_testsuite_root_is_read_too(tmp_path: Path) -> None:
    assert require_tests(junit(tmp_path, PASSED, root="")).returncode == 0


def test_zero_tests_fails(tmp_path: Path) -> None:
    path = junit(tmp_path, "")
    result = require_tests(path)
    assert result.returncode == 1
    assert f"require-tests: {path} holds no test" in result.stderr
    assert result.stdout == ""


def test_all_skipped_fails_and_names_the_reasons(tmp_path: Path) -> None:
    cases = [skipped(f"test_{i}", "waived: kvm (profile scratch)") for i in range(3)]
    cases.append(skipped("test_x", "blocked by Team Alpha (phases/test_p1_alpha.py::test_a)"))
    result = require_tests(junit(tmp_path, "".join(cases)))
    assert result.returncode == 1
    assert "all 4 tests skipped, none ran" in result.stderr
    assert "3x waived: kvm (profile scratch)" in result.stderr
    assert "1x blocked by Team Alpha" in result.stderr


def test_missing_file_fails(tmp_path: Path) -> None:
    result = require_tests(tmp_path / "absent.xml")
    assert result.returncode == 2
    assert "absent.xml does not exist: the run wrote no JUnit report" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [("<testsuites><testsuite>", "is not valid XML"), ("<html></html>", "is not a JUnit report")],
)
def test_a_file_that_is_not_junit_fails(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(content)
    result = require_tests(path)
    assert result.returncode == 2
    assert message in result.stderr


def test_usage_without_a_file(tmp_path: Path) -> None:
    result = require_tests()
    assert result.returncode == 2
    assert "usage: scripts/require-tests JUNIT_XML" in result.stderr


# -- reports written by a real pytest run -------------------------------------------------------


def pytest_junit(tmp_path: Path, source: str) -> tuple[int, Path]:
    """Run pytest on one module in an empty directory (none of the suite's config or plugins)."""
    (tmp_path / "test_sample.py").write_text(source)
    report = tmp_path / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={report}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    return result.returncode, report


# name: (module source, pytest's exit code, require-tests' exit code)
REAL_CASES = {
    "passed": ("import pytest\ndef test_a(): pass\ndef test_b(): pytest.skip('later')\n", 0, 0),
    "all-skipped": ("import pytest\n@pytest.mark.skip(reason='waived')\ndef test_a(): pass\n", 0, 1),
    "none-collected": ("def helper():\n    pass\n", 5, 1),
}


@pytest.mark.parametrize("case", REAL_CASES)
def test_reports_of_a_real_pytest_run(tmp_path: Path, case: str) -> None:
    source, pytest_exit, expected = REAL_CASES[case]
    code, report = pytest_junit(tmp_path, source)
    assert code == pytest_exit
    result = require_tests(report)
    assert result.returncode == expected, result.stdout + result.stderr
