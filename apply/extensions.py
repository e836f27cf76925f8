"""Extension points between teams, with pluggy (pytest's own plugin system).

A team whose step takes input from later teams declares that input as a hook in its package's
``hookspecs`` module; a later team contributes by implementing the hook in its package's
``hooks`` module, and the earlier team's step calls ``hooks().<name>(...)``. Neither imports
the other's code upward in plan order, and no team edits another's files. Every team package
the plan names (``settings = "steps.<team>.settings:..."``) is searched for both modules, so
a team's contribution holds on every run whether or not the team itself is selected: what an
earlier team renders never flips with the selection.

    # steps/bravo/hookspecs.py
    @hookspec(firstresult=True)
    def containerd_sandbox_image(settings, profile) -> str | None: ...

    # steps/delta/hooks.py
    @hookimpl
    def containerd_sandbox_image(settings, profile) -> str: ...
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any

import pluggy

from settings.model import Settings

PROJECT = "hvsuite"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RunHooks:
    """The one extension point outside the teams: the controller calls it itself."""

    @staticmethod
    @hookspec
    def run_finished(host: Any, settings: Settings, reports_dir: Any, target_name: str, fleet: Any) -> None:
        """A run (not a dry run) has ended and its verdicts, signals and timeline are written
        to ``reports_dir``: a team that shows them on the primary (``host``, the runner's
        `apply.runner.Host`) takes them there. ``fleet`` is the run's hosts as
        (name, address, roles) tuples. It never changes the run's outcome."""


def team_packages() -> list[str]:
    """The packages of the plan's teams ("steps.<team>"), in plan order."""
    # The config was composed from the plan's sections: no second read of the plan.
    return [section.__module__.rpartition(".")[0] for section in Settings.team_section_classes()]


def _optional_module(name: str) -> Any | None:
    return importlib.import_module(name) if importlib.util.find_spec(name) is not None else None


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(RunHooks)
    packages = team_packages()
    for package in packages:
        if (specs := _optional_module(f"{package}.hookspecs")) is not None:
            manager.add_hookspecs(specs)
    for package in packages:
        if (impls := _optional_module(f"{package}.hooks")) is not None:
            manager.register(impls, name=package)
    # A hook implemented for no declared spec is a typo that would silently never run.
    manager.check_pending()
    return manager


def hooks() -> Any:
    """The hook caller: ``hooks().name(keyword=arguments)``."""
    return plugin_manager().hook
