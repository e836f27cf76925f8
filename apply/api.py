"""The one shape of a component step: ``@step("title")`` on a function of a :class:`Context`.

A step reads facts, compares them with the desired state and runs ops for what differs
(``apply.ops``); it returns nothing, since what it changed is what its ops recorded. Called,
a step returns :class:`Applied`: its title and those ops, with ``changed`` derived from them.

A connection that drops while one of the step's ops runs (``ConnectionLost``) does not fail
the step: the runner has reconnected, so the step runs again from the top, reading fresh
facts, and an op that had completed is then a no-op. The number of such retries is bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from apply.runner import ApplyError, ConnectionLost, Host, Mode, OpResult
from settings.base import EffectiveProfile
from settings.model import Settings

if TYPE_CHECKING:
    from apply.artifacts import ArtifactStore

# A drop that recurs this often within one step is no passing fault.
STEP_RETRIES = 3


@dataclass(frozen=True)
class Context:
    """What a step may use: one host, the config, the run's profile, and the artifacts."""

    host: Host
    settings: Settings
    profile: EffectiveProfile
    # The address the controller reaches this host at (certificates name it, probes use it).
    address: str
    artifacts: ArtifactStore | None = None
    # Addresses of the inventory's hosts by role, for steps that configure peers.
    peers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def mode(self) -> Mode:
        return self.host.mode

    def require_artifacts(self) -> ArtifactStore:
        if self.artifacts is None:
            raise ApplyError(f"[{self.host.name}] this step installs pinned artifacts; pass artifacts=")
        return self.artifacts


@dataclass(frozen=True)
class Applied:
    """What one step did (or, in check mode, would do)."""

    title: str
    ops: tuple[OpResult, ...]

    @property
    def changed(self) -> bool:
        return any(result.changed for result in self.ops)

    @property
    def changes(self) -> list[OpResult]:
        return [result for result in self.ops if result.changed]


StepFunction = Callable[[Context], None]


@dataclass(frozen=True)
class Step:
    title: str
    function: StepFunction

    def __call__(self, ctx: Context) -> Applied:
        host = ctx.host
        ops: list[OpResult] = []
        try:
            for attempt in range(1, STEP_RETRIES + 2):
                try:
                    with host.step(self.title) as log:
                        try:
                            self.function(ctx)
                        finally:
                            ops += log.results
                    return Applied(self.title, tuple(ops))
                except ConnectionLost as lost:
                    if attempt > STEP_RETRIES:
                        raise ApplyError(
                            f"[{host.name}] step {self.title!r}: the connection dropped {attempt} "
                            f"times while it ran; last: {lost}"
                        ) from lost
                    # What already changed still counts on the next attempt (see Host.execute).
                    host.carried_changes |= {result.op for result in ops if result.changed}
        finally:
            host.carried_changes.clear()
        raise AssertionError("unreachable")  # pragma: no cover


def step(title: str) -> Callable[[StepFunction], Step]:
    """Declare a component step (see the module doc)."""

    def declare(function: StepFunction) -> Step:
        return Step(title, function)

    return declare
