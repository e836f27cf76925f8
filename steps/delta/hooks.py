"""Team Delta's contributions to earlier teams' extension points."""

from __future__ import annotations

from typing import Any

from apply.api import Context
from apply.extensions import hookimpl
from settings.base import EffectiveProfile
from steps.delta import api_metrics, kubernetes


@hookimpl
def containerd_sandbox_image(settings: object, profile: EffectiveProfile) -> str:
    # kubelet's pods run on the pause image kubeadm names for this Kubernetes.
    return kubernetes.distribution(settings, profile).pause_image  # type: ignore[arg-type]


@hookimpl
def prometheus_scrape_jobs(ctx: Context) -> list[dict[str, Any]]:
    return api_metrics.contributed_jobs(ctx)
