"""Fixtures the teams' checks share, defined once (the hosts, the config and the apply context
come from the targets plugin: targets/plugin.py)."""

from __future__ import annotations

import pytest

from apply.api import Context
from checks.kube import Cluster
from settings.model import Settings
from steps.alpha import tls
from steps.delta import control_plane


@pytest.fixture(scope="module")
def certs(settings: Settings) -> tls.Paths:
    """Where Alpha's certificates and keys are on the primary host."""
    return tls.Paths(settings.alpha.tls.cert_dir)


@pytest.fixture(scope="module")
def cluster(ctx: Context) -> Cluster:
    """The Kubernetes API through the operator's kubeconfig, copied from the primary host
    (module-scoped: requested after a team's apply, it sees that team's cluster)."""
    return Cluster(control_plane.fetch_kubeconfig(ctx))
