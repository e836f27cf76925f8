"""Fixtures the teams' checks share, defined once (the hosts, the config and the apply context
come from the targets plugin: targets/plugin.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

import engine
from apply.api import Context
from checks.kube import CheckNamespace, Cluster
from settings.model import Settings
from steps.alpha import tls
from steps.delta import control_plane
from steps.delta.kubernetes import node_name


@pytest.fixture(scope="module")
def certs(settings: Settings) -> tls.Paths:
    """Where Alpha's certificates and keys are on the primary host."""
    return tls.Paths(settings.alpha.tls.cert_dir)


@pytest.fixture(scope="module")
def check_namespace(cluster: Cluster, settings: Settings, target) -> Iterator[CheckNamespace]:
    """A namespace for one team's traffic checks, with pods from an image built and pushed for
    this run (its marker carries a fresh nonce); deleted at the end of the module."""
    with CheckNamespace.create(
        cluster, settings, registry_host=target.address, nonce=secrets.token_hex(8)
    ) as namespace:
        yield namespace


@pytest.fixture(scope="module")
def cluster(ctx: Context) -> Cluster:
    """The Kubernetes API through the operator's kubeconfig, copied from the primary host
    (module-scoped: requested after a team's apply, it sees that team's cluster)."""
    return Cluster(control_plane.fetch_kubeconfig(ctx), home_node=node_name(ctx))


@pytest.fixture(scope="module")
def reports_dir(request: pytest.FixtureRequest) -> Path:
    """The run's reports directory (it exists), where a team writes the reports it makes."""
    path = engine.reports_dir(request.config)
    path.mkdir(parents=True, exist_ok=True)
    return path
