"""Outside-in checks of a Kubernetes cluster through its API, from the controller, with the
operator's kubeconfig and the official Python client.

:class:`MarkerWorkload` is what Team Delta schedules to prove the cluster runs pods: a pod from
an image the suite builds and pushes to its own registry for this run (Debian's static
busybox and a marker file holding a nonce), serving that marker over HTTP behind a
ClusterIP Service; a client pod fetching it through the Service; and a ServiceAccount with a
Role for pods only. Everything lives in one namespace per run, deleted afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from apply.poll import eventually
from checks.image import MARKER_PATH, publish_marker_image
from settings.model import Settings
from steps.bravo import registry

HTTP_PORT = 8080
HTTPD = f"/bin/busybox httpd -f -p {HTTP_PORT} -h /"
RBAC = "rbac.authorization.k8s.io"


class Cluster:
    """The API through ``kubeconfig``. Pods the checks start run on ``home_node`` unless they
    name their own node: the node pulls the run's image from the suite's registry on the
    primary host's loopback, which only the primary's node reaches."""

    def __init__(self, kubeconfig: Path, home_node: str | None = None) -> None:
        self.home_node = home_node
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.authz = client.AuthorizationV1Api(self.api)
        self.storage = client.StorageV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.networking = client.NetworkingV1Api(self.api)

    def get_raw(self, path: str) -> str:
        """The body of a GET of a non-resource path (``/readyz/etcd``, ``/version``)."""
        return self.api.call_api(
            path, "GET", auth_settings=["BearerToken"], response_type="str", _return_http_data_only=True
        )

    def node_conditions(self) -> dict[str, bool]:
        """Node name -> its Ready condition."""
        ready = {}
        for node in self.core.list_node().items:
            conditions = {c.type: c.status for c in node.status.conditions or []}
            ready[node.metadata.name] = conditions.get("Ready") == "True"
        return ready

    def taints(self) -> dict[str, list[str]]:
        return {
            node.metadata.name: [f"{t.key}:{t.effect}" for t in node.spec.taints or []]
            for node in self.core.list_node().items
        }

    def api_service_ip(self) -> str:
        return self.core.read_namespaced_service("kubernetes", "default").spec.cluster_ip

    def load_balancer_addresses(self) -> dict[str, set[str]]:
        """Every Service of type LoadBalancer ("namespace/name") with the addresses it holds."""
        services = self.core.list_service_for_all_namespaces().items
        return {
            f"{svc.metadata.namespace}/{svc.metadata.name}": {
                entry.ip for entry in (svc.status.load_balancer.ingress or ()) if entry.ip
            }
            for svc in services
            if svc.spec.type == "LoadBalancer"
        }

    def deployment_available(self, namespace: str, name: str) -> bool:
        deployment = self.apps.read_namespaced_deployment(name, namespace)
        conditions = {c.type: c.status for c in deployment.status.conditions or []}
        return conditions.get("Available") == "True"

    def wait_for_service_account(self, namespace: str, name: str, timeout: float) -> None:
        read = self.core.read_namespaced_service_account
        if not eventually(lambda: exists(read, name, namespace), timeout=timeout):
            # Still missing: the API's own 404 says so.
            self.core.read_namespaced_service_account(name, namespace)

    def wait_for_pod(self, namespace: str, name: str, phases: set[str], timeout: float) -> client.V1Pod:
        return eventually(
            lambda: self.core.read_namespaced_pod(name, namespace),
            lambda pod: pod.status.phase in phases,
            timeout=timeout,
        )

    def create_pod(self, namespace: str, pod: client.V1Pod) -> client.V1Pod:
        """``pod`` created, on the home node unless it selects its own."""
        if self.home_node and not pod.spec.node_selector:
            pod.spec.node_selector = {"kubernetes.io/hostname": self.home_node}
        return self.core.create_namespaced_pod(namespace, pod)

    def run_pod(self, namespace: str, pod: client.V1Pod, timeout: float) -> str:
        """``pod`` (restart Never) run to completion; its log. A pod that did not succeed
        fails the caller's check with its phase and log."""
        name = pod.metadata.name
        self.create_pod(namespace, pod)
        done = self.wait_for_pod(namespace, name, {"Succeeded", "Failed"}, timeout)
        log = self.core.read_namespaced_pod_log(name, namespace)
        assert done.status.phase == "Succeeded", f"pod {name}: {done.status.phase}: {log}"
        return log

    def create_namespace(self, name: str, timeout: float) -> None:
        """A namespace that accepts pods (its default ServiceAccount exists)."""
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        # Pods are refused until the controller manager has given the namespace its
        # default ServiceAccount (a while after the control plane restarted).
        self.wait_for_service_account(name, "default", timeout)


def exists(read: Callable[..., Any], *args: str) -> bool:
    """Whether the object ``read(*args)`` reads exists (the API answers 404 when it does not)."""
    try:
        read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def publish_suite_image(
    settings: Settings, *, registry_host: str, repository: str, nonce: str, marker: str
) -> str:
    """The suite's busybox image with ``marker`` pushed for this run; the reference the node
    pulls it by. Pushed over the network to the suite's registry; the node pulls it from
    loopback, where containerd speaks plain HTTP to a registry without further config."""
    port = settings.port("Bravo", registry.PORT_NAME)
    pushed = publish_marker_image(f"http://{registry_host}:{port}", repository, nonce, marker)
    return pushed.reference.replace(f"{registry_host}:{port}", f"127.0.0.1:{port}", 1)


@dataclass
class MarkerWorkload:
    cluster: Cluster
    namespace: str
    nonce: str
    marker: str
    service_ip: str
    timeout: float
    server: str = "marker-server"
    account: str = "hvsuite-unprivileged"

    @property
    def service_url(self) -> str:
        return f"http://{self.service_ip}{MARKER_PATH}"

    @classmethod
    @contextlib.contextmanager
    def deploy(
        cls, cluster: Cluster, settings: Settings, *, registry_host: str, nonce: str, timeout: float = 180.0
    ) -> Iterator[MarkerWorkload]:
        with CheckNamespace.create(
            cluster, settings, registry_host=registry_host, nonce=nonce, timeout=timeout
        ) as checks:
            namespace, image, marker, core = checks.name, checks.image, checks.marker, cluster.core
            labels = {"app": "marker", "run": nonce[:8]}
            cluster.create_pod(namespace, pod(
                "marker-server", image, labels,
                # The log shows the marker; then busybox httpd serves / (so GET /marker).
                ["/bin/busybox", "sh", "-c", f"/bin/busybox cat {MARKER_PATH}; exec {HTTPD}"],
                restart="Always",
            ))  # fmt: skip
            service = checks.service("marker", labels, port=80)
            core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=cls.account))
            )
            cluster.rbac.create_namespaced_role(namespace, client.V1Role(
                metadata=client.V1ObjectMeta(name="pods-reader"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
            ))  # fmt: skip
            cluster.rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="pods-reader"),
                role_ref=client.V1RoleRef(api_group=RBAC, kind="Role", name="pods-reader"),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name=cls.account, namespace=namespace)],
            ))  # fmt: skip
            workload = cls(cluster, namespace, nonce, marker, service.spec.cluster_ip, timeout)
            cluster.wait_for_pod(namespace, workload.server, {"Running"}, timeout)
            yield workload

    def server_phase(self) -> str:
        return self.cluster.core.read_namespaced_pod(self.server, self.namespace).status.phase

    def server_node(self) -> str:
        return self.cluster.core.read_namespaced_pod(self.server, self.namespace).spec.node_name

    def server_log(self) -> str:
        return self.cluster.core.read_namespaced_pod_log(self.server, self.namespace)

    def _run_to_completion(self, name: str, command: list[str]) -> str:
        """A pod of the same image running ``command`` once; its log."""
        server = self.cluster.core.read_namespaced_pod(self.server, self.namespace)
        image = server.spec.containers[0].image
        return self.cluster.run_pod(
            self.namespace, pod(name, image, {"app": name}, command, "Never"), self.timeout
        )

    def fetch_from_pod(self) -> str:
        """The marker's body as a pod gets it through the Service. busybox nc, not wget: the
        static busybox's wget crashes in an image without glibc's NSS modules."""
        request = f"printf 'GET {MARKER_PATH} HTTP/1.0\\r\\n\\r\\n'"
        log = self._run_to_completion(
            "marker-client",
            ["/bin/busybox", "sh", "-c", f"{request} | /bin/busybox nc -w 5 {self.service_ip} 80"],
        )
        head, _, body = log.replace("\r\n", "\n").partition("\n\n")
        assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0], log
        return body.strip()

    def resolve_from_pod(self, name: str) -> str:
        log = self._run_to_completion("resolver", ["/bin/busybox", "nslookup", name])
        answers = [
            line.split()[-1] for line in log.splitlines() if line.startswith("Address") and "#53" not in line
        ]
        return answers[-1] if answers else log

    def account_may(self, verb: str, resource: str) -> bool:
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{self.namespace}:{self.account}",
                groups=[
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{self.namespace}",
                    "system:authenticated",
                ],
                resource_attributes=client.V1ResourceAttributes(
                    namespace=self.namespace, verb=verb, resource=resource
                ),
            )
        )
        return bool(self.cluster.authz.create_subject_access_review(review).status.allowed)


def pod(
    name: str,
    image: str,
    labels: dict[str, str],
    command: list[str],
    restart: str,
    *,
    claims: dict[str, str] | None = None,
) -> client.V1Pod:
    """A one-container pod of the suite's image; ``claims`` mounts PVCs (claim -> path)."""
    claims = claims or {}
    volumes = [
        client.V1Volume(
            name=f"vol{i}",
            persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=claim),
        )
        for i, claim in enumerate(claims)
    ]
    mounts = [client.V1VolumeMount(name=f"vol{i}", mount_path=path) for i, path in enumerate(claims.values())]
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            restart_policy=restart,
            # busybox as PID 1 ignores SIGTERM: do not wait the default 30 s on delete.
            termination_grace_period_seconds=1,
            automount_service_account_token=False,
            containers=[
                client.V1Container(name=name, image=image, command=command, volume_mounts=mounts or None)
            ],
            volumes=volumes or None,
        ),
    )


# The checks' own namespaces: everything else in the cluster may be the platform's users'.
CHECK_NAMESPACE_PREFIX = "hvsuite-check-"


@dataclass
class CheckNamespace:
    """A namespace of one check, deleted afterwards, with pods from the run's marker image
    (busybox and a file with the run's marker): servers that answer the marker over HTTP,
    sinks that swallow a TCP stream, and one-shot clients."""

    cluster: Cluster
    name: str
    image: str
    marker: str
    timeout: float = 180.0

    @classmethod
    @contextlib.contextmanager
    def create(
        cls,
        cluster: Cluster,
        settings: Settings,
        *,
        registry_host: str,
        nonce: str,
        repository: str | None = None,
        timeout: float = 180.0,
    ) -> Iterator[CheckNamespace]:
        """The namespace and the run's image, pushed to ``repository`` (default: Delta's
        ``test_repository``)."""
        marker = f"hvsuite-pod-marker {nonce}"
        image = publish_suite_image(
            settings,
            registry_host=registry_host,
            repository=repository or settings.delta.test_repository,
            nonce=nonce,
            marker=marker,
        )
        name = f"{CHECK_NAMESPACE_PREFIX}{nonce[:8]}"
        cluster.create_namespace(name, timeout)
        try:
            yield cls(cluster, name, image, marker, timeout)
        finally:
            with contextlib.suppress(ApiException):
                cluster.core.delete_namespace(name, grace_period_seconds=0)

    def serve_marker(
        self,
        name: str,
        *,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        host_port: int | None = None,
        node: str | None = None,
    ) -> client.V1Pod:
        """A pod answering ``GET /marker`` on port 8080 (and ``host_port`` on the node), on
        ``node`` if given (which must hold the run's image); Running."""
        server = pod(
            name, self.image, labels or {"app": name}, ["/bin/busybox", "sh", "-c", f"exec {HTTPD}"], "Always"
        )
        if node:
            server.spec.node_selector = {"kubernetes.io/hostname": node}
        server.spec.containers[0].ports = [
            client.V1ContainerPort(container_port=HTTP_PORT, host_port=host_port)
        ]
        server.metadata.annotations = annotations
        return self._start(server, namespace)

    def sink(self, name: str, port: int, *, annotations: dict[str, str] | None = None) -> client.V1Pod:
        """A pod reading whatever connects to ``port`` and discarding it, one stream after another."""
        command = f"while true; do /bin/busybox nc -l -p {port} > /dev/null; done"
        sink = pod(name, self.image, {"app": name}, ["/bin/busybox", "sh", "-c", command], "Always")
        sink.metadata.annotations = annotations
        return self._start(sink, None)

    def _start(self, started: client.V1Pod, namespace: str | None) -> client.V1Pod:
        namespace = namespace or self.name
        self.cluster.create_pod(namespace, started)
        return self.cluster.wait_for_pod(namespace, started.metadata.name, {"Running"}, self.timeout)

    def service(
        self, name: str, selector: dict[str, str], *, port: int, kind: str = "ClusterIP"
    ) -> client.V1Service:
        return self.cluster.core.create_namespaced_service(
            self.name,
            client.V1Service(
                metadata=client.V1ObjectMeta(name=name),
                spec=client.V1ServiceSpec(
                    type=kind,
                    selector=selector,
                    ports=[client.V1ServicePort(port=port, target_port=HTTP_PORT)],
                ),
            ),
        )

    def fetch(self, name: str, address: str, port: int = HTTP_PORT, *, wait: int = 5) -> str | None:
        """``GET /marker`` from a new pod: the body, or None when nothing answered in ``wait`` s."""
        request = f"printf 'GET {MARKER_PATH} HTTP/1.0\\r\\n\\r\\n'"
        command = f"{request} | /bin/busybox nc -w {wait} {address} {port}; true"
        log = self.run(name, ["/bin/busybox", "sh", "-c", command])
        head, _, body = log.replace("\r\n", "\n").partition("\n\n")
        if not head.startswith("HTTP/1.") or " 200 " not in head.splitlines()[0]:
            return None
        return body.strip()

    def run(self, name: str, command: list[str]) -> str:
        """A pod running ``command`` once; its log (it must succeed)."""
        return self.cluster.run_pod(
            self.name, pod(name, self.image, {"app": name}, command, "Never"), self.timeout
        )
