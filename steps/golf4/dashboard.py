"""Team Golf-4: the operator dashboard on the primary host, as a systemd service.

The application is a Python package kept in the suite (``steps/golf4/app/``) and copied to
``golf4.app_dir`` as ``hvsuite_dashboard``; it runs on Debian's FastAPI, uvicorn and Jinja2.
Its settings are a JSON file rendered from the config (its port is the [[ports]] rule named
``golf4.port_name``, Prometheus' the rule Charlie declared), validated by the application
itself before it replaces the live one. The operator's command is the package's ``cli.py``,
run by a small entry point installed as ``golf4.cli_path``. The service runs as a system
user of its own and restarts only when its code, settings or unit changed. What it shows
comes from the controller (`steps.golf4.publish`), not from here.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from pathlib import Path

from apply import ops
from apply.api import Context, step
from settings.model import Settings
from steps.base import flintlock

TEMPLATES = Path(__file__).parent / "templates"
APP = Path(__file__).parent / "app"
# The package's name on the host (its modules import each other relatively).
PACKAGE = "hvsuite_dashboard"
UNIT_TEMPLATE = TEMPLATES / "hvsuite-dashboard.service.j2"


def unit_path(settings: Settings) -> str:
    return f"/etc/systemd/system/{settings.golf4.unit}.service"


def app_files() -> dict[str, bytes]:
    """Pure: the application's files by their path inside the package (code and templates)."""
    found = {}
    for path in sorted(APP.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".j2"):
            found[path.relative_to(APP).as_posix()] = path.read_bytes()
    return found


def render_cli(settings: Settings) -> str:
    """The `hvsuite` entry point: the package's command, with the service's settings file."""
    golf4 = settings.golf4
    return ops.render(
        TEMPLATES / "hvsuite.py.j2",
        {"app_dir": golf4.app_dir, "package": PACKAGE, "config_file": golf4.config_file},
    )


def render_config(settings: Settings) -> str:
    """Pure: the service's settings file (JSON, keys sorted)."""
    golf4 = settings.golf4
    config = {
        "listen_address": golf4.listen_address,
        "port": settings.port("Golf-4", golf4.port_name),
        "data_dir": golf4.data_dir,
        "prometheus_url": f"http://127.0.0.1:{settings.port('Charlie', 'prometheus')}",
        "prometheus_timeout": golf4.prometheus_timeout,
        "flintlock_state_dir": settings.base.state_dir,
        "flintlock_unit": flintlock.UNIT,
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def render_unit(settings: Settings) -> str:
    golf4 = settings.golf4
    return ops.render(
        UNIT_TEMPLATE,
        {"app_dir": golf4.app_dir, "package": PACKAGE, "config_file": golf4.config_file, "user": golf4.user},
    )


def user_command(user: str) -> str:
    """A system user without a home or a login shell, in a group of its own."""
    quoted = shlex.quote(user)
    return (
        f"useradd --system --user-group --no-create-home --home-dir /nonexistent "
        f"--shell /usr/sbin/nologin {quoted}"
    )


def check_config_command(settings: Settings) -> str:
    """The application's own validation of a settings file (``{path}``: the new file)."""
    return (
        f"PYTHONDONTWRITEBYTECODE=1 PYTHONPATH={shlex.quote(settings.golf4.app_dir)} "
        f"python3 -m {PACKAGE} --check-config {{path}}"
    )


@step("Dashboard service")
def apply(ctx: Context) -> None:
    """Debian's web stack, the application, its settings, the `hvsuite` command and the unit;
    the service enabled and running (restarted when any of them changed)."""
    host, settings = ctx.host, ctx.settings
    golf4 = settings.golf4
    package_dir = posixpath.join(golf4.app_dir, PACKAGE)
    ops.packages(host, golf4.packages)
    ops.command(
        host,
        user_command(golf4.user),
        unless=f"getent passwd {shlex.quote(golf4.user)}",
        name=f"system user {golf4.user}",
    )
    with host.step("The application") as code:
        for directory in sorted({posixpath.dirname(name) for name in app_files()}):
            ops.directory(host, posixpath.join(package_dir, directory) if directory else package_dir)
        for name, content in app_files().items():
            ops.file(host, posixpath.join(package_dir, name), content)
    with host.step("Its settings") as config:
        ops.directory(host, posixpath.dirname(golf4.config_file))
        ops.file(host, golf4.config_file, render_config(settings), validate=check_config_command(settings))
    # The published reports: written by the controller, read by the service.
    ops.directory(host, golf4.data_dir)
    ops.file(host, golf4.cli_path, render_cli(settings), mode="0755")
    unit = ops.file(host, unit_path(settings), render_unit(settings))
    ops.daemon_reload(host, force=unit.changed)
    ops.service(
        host,
        golf4.unit,
        enabled=True,
        running=True,
        restart=code.changed or config.changed or unit.changed,
    )
