"""Load the suite's one config file (TOML), validate it, and explain every problem at once.

    load_settings(path | None, overrides) -> Settings

`path` None loads the embedded default (`settings/scratch.toml`). `overrides` maps dotted
keys ("target.url", "scratch.name") to values and wins over the file. Any problem raises one
ConfigError whose message has a line per problem: `FILE: field.path: problem. Fix: ...`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from settings.base import Waiver
from settings.model import DEFAULT_PLAN, Settings

SETTINGS_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = SETTINGS_DIR / "scratch.toml"


class ConfigError(Exception):
    """The config cannot be used; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid config {source}:\n" + "\n".join(f"  {p}" for p in problems))


def load_settings(
    path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    plan_file: Path | None = None,
) -> Settings:
    source = Path(path).expanduser() if path is not None else DEFAULT_CONFIG
    label = str(source)
    data = _read_toml(source)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, label)
    # Checks the model cannot do (the plan's team names, files on this machine) read the raw
    # data, so that one run reports them together with the model's own errors.
    problems = [*_check_teams(label, data, plan_file or DEFAULT_PLAN), *_check_files(label, data)]
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = [_explain(label, error, data) for error in exc.errors()] + problems
    if problems:
        raise ConfigError(label, problems)
    return settings


def plan_team_names(plan_file: Path = DEFAULT_PLAN) -> list[str]:
    try:
        with open(plan_file, "rb") as handle:
            plan = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(plan_file), [f"{plan_file}: cannot read the plan: {exc}"]) from None
    return [team["name"] for team in plan.get("team", [])]


def _read_toml(source: Path) -> dict[str, Any]:
    try:
        with open(source, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            str(source),
            [
                f"{source}: file not found. Fix: pass an existing file to --config "
                f"(copy settings/hetzner.example.toml for a real server) or omit --config for scratch"
            ],
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            str(source), [f"{source}: not valid TOML: {exc}. Fix: correct the syntax there"]
        ) from None
    except OSError as exc:
        raise ConfigError(str(source), [f"{source}: cannot read: {exc}"]) from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, label: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(label, [f"override {dotted}: {part} is not a table"])
        node = child
    node[parts[-1]] = value


def _location(loc: Iterable[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _known_fields(loc: tuple[int | str, ...]) -> list[str]:
    """Field names accepted at the parent of `loc` (for "unknown key" errors)."""
    model: Any = Settings
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            model = _model_of(field.annotation) if field else None
        else:
            model = None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _explain(label: str, error: Any, data: Mapping[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    where = _location(loc)
    kind = error.get("type", "")
    message = error.get("msg", "invalid").removeprefix("Value error, ")
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        known = _known_fields(loc)
        hint = f" (known keys here: {', '.join(known)})" if known else ""
        return f"{label}: {where}: unknown key. Fix: remove it or correct its spelling{hint}"
    if kind == "missing":
        return f"{label}: {where}: required key is missing. Fix: add it"
    if kind == "enum" and "waivers" in loc:
        known = ", ".join(w.value for w in Waiver)
        return f"{label}: {where}: unknown waiver {value!r}. Fix: use one of: {known}"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "sha256":
        url = _artifact_url(data, loc)
        return (
            f"{label}: {where}: {value!r} is not a sha256 (64 hex digits). Fix: fill in the sha256 of "
            f"{url or 'the file'} (download it once and run sha256sum); never guess a checksum"
        )
    if kind == "string_pattern_mismatch":
        return (
            f"{label}: {where}: {value!r} does not match {ctx.get('pattern')}. Fix: use a value of that form"
        )
    if (
        kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than")
        and loc
        and loc[-1] == "port"
    ):
        return f"{label}: {where}: port {value!r} is out of range. Fix: use a port between 1 and 65535"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"{label}: {where}: {value!r}: {message}. Fix: use a value in range"
    if kind == "value_error":
        return f"{label}: {where}: {message}. Fix: correct {where}"
    return f"{label}: {where}: {message} (got {value!r}). Fix: correct {where}"


def _artifact_url(data: Mapping[str, Any], loc: tuple[int | str, ...]) -> str:
    node: Any = data
    for part in loc[:-1]:
        node = node.get(part) if isinstance(node, Mapping) else None
    url = node.get("url") if isinstance(node, Mapping) else None
    return str(url) if url else ""


def _check_teams(label: str, data: Mapping[str, Any], plan_file: Path) -> list[str]:
    teams = plan_team_names(plan_file)
    problems = []
    for key in ("ports", "protocols"):
        rules = data.get(key)
        for index, rule in enumerate(rules if isinstance(rules, list) else []):
            team = rule.get("team") if isinstance(rule, Mapping) else None
            if isinstance(team, str) and team not in teams:
                problems.append(
                    f"{label}: {key}[{index}].team: unknown team {team!r} ({rule.get('name')!r}). "
                    f"Fix: use a team from {plan_file.name}: {', '.join(teams)}"
                )
    return problems


def _check_files(label: str, data: Mapping[str, Any]) -> list[str]:
    ssh = data.get("ssh")
    key = ssh.get("key") if isinstance(ssh, Mapping) else None
    if not isinstance(key, str):
        return []
    path = Path(key).expanduser()
    if not path.is_file():
        return [
            f"{label}: ssh.key: {path} does not exist. Fix: point ssh.key at the private key that logs "
            f"in to the target, or remove ssh.key to use IdentityFile from the ssh config"
        ]
    if path.stat().st_mode & 0o077:
        return [
            f"{label}: ssh.key: {path} is readable by other users; ssh refuses such keys. "
            f"Fix: chmod 600 {path}"
        ]
    return []
