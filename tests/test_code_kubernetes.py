"""The `cluster` source and the `kubernetes` deployer with the official client against the
emulated API server of tests/kube.py (kmock over real HTTP)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest

from bot.config import parse_blueprint
from bot.domain import DataMode, DataRequest, PhaseName, ReleaseSet
from bot.errors import UserError
from pipelines.base import PhaseContext
from pipelines.code.kubernetes import ENV_ID, KubernetesDeployer
from pipelines.code.phase import CodePhase
from pipelines.code.plan import ComponentFailed
from pipelines.code.sources import Resolver
from tests.kube import Cluster

SOURCE, TARGET = "staging", "ephem-pr-1"
DB_URL = "postgresql://ephem_pr_1:pw-of-the-environment@db.internal:5432/ephem_pr_1"
NAME = "app.kubernetes.io/name"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster() as c:
        for ns in (SOURCE, TARGET):
            c.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield c


def workload(kind: str, name: str, containers: list[tuple[str, str]], *,
             component: str | None = None, namespace: str = SOURCE) -> dict[str, Any]:
    labels = {NAME: component} if component else {"app": name}
    pod = {"metadata": {"labels": {"app": name}},
           "spec": {"containers": [{"name": n, "image": i} for n, i in containers]}}
    spec: dict[str, Any] = {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                            "template": pod}
    if kind == "CronJob":
        spec = {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": pod}}}
    api = {"CronJob": "batch/v1"}.get(kind, "apps/v1")
    return {"apiVersion": api, "kind": kind, "spec": spec,
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "annotations": {"deployment.kubernetes.io/revision": "7"}}}


def staging(c: Cluster, *, extra: int = 0) -> None:
    """The reference: api (with a sidecar), web (a digest), worker (a StatefulSet and its
    CronJob), redis (no component label), a Service, a ConfigMap, an Ingress, an HTTPRoute and
    two Secrets."""
    c.put(workload("Deployment", "api-server", [("proxy", "envoyproxy/envoy:v1.30"),
                                                ("api", "ghcr.io/shop/api:2.7.3")],
                   component="api"))
    c.put(workload("Deployment", "web", [("web", "ghcr.io/shop/web:5.1.0@sha256:ab12")],
                   component="web"))
    c.put(workload("StatefulSet", "worker", [("worker", "ghcr.io/shop/worker:2.7.3")],
                   component="worker"))
    c.put(workload("CronJob", "worker-nightly", [("worker", "ghcr.io/shop/worker:2.7.3")],
                   component="worker"))
    c.put(workload("Deployment", "redis", [("redis", "redis:7")]))
    for i in range(extra):
        c.put(workload("Deployment", f"svc{i:02}", [("app", f"ghcr.io/shop/svc{i:02}:1.{i}")],
                       component=f"svc{i:02}"))
    c.put({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "api", "namespace": SOURCE, "labels": {NAME: "api"}},
           "spec": {"type": "NodePort", "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
                    "selector": {"app": "api-server"},
                    "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}})
    c.put({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "shop-config", "namespace": SOURCE},
           "data": {"FEATURE_X": "on"}})
    c.put({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": "api", "namespace": SOURCE, "labels": {NAME: "api"}},
           "spec": {"tls": [{"hosts": ["api.staging.example.com"], "secretName": "tls"}],
                    "rules": [{"host": "api.staging.example.com", "http": {"paths": [
                        {"path": "/v1", "pathType": "Prefix", "backend": {"service": {
                            "name": "api", "port": {"number": 80}}}}]}}]}})
    c.put({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "web", "namespace": SOURCE, "labels": {NAME: "web"}},
           "spec": {"hostnames": ["shop.staging.example.com"],
                    "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}})
    for secret in ("api-keys", "staging-only"):
        c.put({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": secret, "namespace": SOURCE},
               "data": {"key": base64.b64encode(b"x").decode()}})


def config(c: Cluster, **extra: Any) -> dict[str, Any]:
    return {"kubeconfig": str(c.kubeconfig), "context": c.context, **extra}


def deployer(c: Cluster, **extra: Any) -> KubernetesDeployer:
    bp = parse_blueprint({
        "references": {"staging": {"source": {"kind": "cluster", "namespace": SOURCE,
                                              **config(c)}}},
        "phases": {"code": {"kubernetes": config(c, **{
            "hosts": "{host}-{env}.preview.example.com", "secrets": ["api-keys"],
            "poll": 0.05, **extra})}}})
    assert bp.phases.code is not None and bp.phases.code.kubernetes is not None
    return KubernetesDeployer(bp.phases.code.kubernetes, references=bp.references)


def ctx(versions: dict[str, str], said: list[str] | None = None) -> PhaseContext:
    async def emit(detail: str) -> None:
        if said is not None:
            said.append(detail)

    bp = parse_blueprint({})
    return PhaseContext(
        env_id=1, name="pr-1", owner_id="U1", release_set=ReleaseSet(versions),
        data=DataRequest(DataMode.SEED), blueprint=bp, emit=emit, reference="staging",
        outputs={PhaseName.INFRA: {"namespace": TARGET}, PhaseName.DATA: {"host": "db"}},
        secrets={PhaseName.DATA: {"database_url": DB_URL}})


def resolver(c: Cluster, **extra: Any) -> Resolver:
    bp = parse_blueprint({"references": {"staging": {"source": {
        "kind": "cluster", "namespace": SOURCE, **config(c), **extra}}}})
    return Resolver(bp.references)


async def test_a_reference_namespace_resolves_to_a_set_with_list_calls_only(
        cluster: Cluster) -> None:
    staging(cluster)
    before = len(cluster.requests())
    found = await resolver(cluster).resolve("staging")
    assert found == ReleaseSet({"api": "2.7.3", "web": "5.1.0@sha256:ab12", "worker": "2.7.3"})
    calls = sorted(path for _, path, _ in cluster.requests()[before:])
    assert calls == [f"/apis/apps/v1/namespaces/{SOURCE}/deployments",
                     f"/apis/apps/v1/namespaces/{SOURCE}/statefulsets",
                     f"/apis/batch/v1/namespaces/{SOURCE}/cronjobs"]


async def test_a_mapping_and_conflicting_versions(cluster: Cluster) -> None:
    staging(cluster)
    mapped = await resolver(cluster, components={"cache": "redis"}).resolve("staging")
    assert mapped.versions["cache"] == "7"
    cluster.patch("apps/v1/statefulsets", SOURCE, "worker", {"spec": {"template": {"spec": {
        "containers": [{"name": "worker", "image": "ghcr.io/shop/worker:2.7.4"}]}}}})
    with pytest.raises(UserError) as err:
        await resolver(cluster).resolve("staging")
    assert "component worker runs two versions" in str(err.value)
    assert "StatefulSet/worker 2.7.4" in str(err.value)


async def test_deploy_copies_pins_rewrites_and_links(cluster: Cluster) -> None:
    staging(cluster)
    cluster.rollout = "auto"
    said: list[str] = []
    versions = {"api": "2.8.0-rc1", "web": "5.1.0@sha256:ab12", "worker": "2.7.3"}
    context = ctx(versions, said)
    phase = CodePhase(deployer(cluster))
    result = await phase.apply(context)

    api = cluster.get("apps/v1/deployments", TARGET, "api-server")
    assert api is not None
    images = {c["name"]: c["image"] for c in api["spec"]["template"]["spec"]["containers"]}
    assert images == {"proxy": "envoyproxy/envoy:v1.30", "api": "ghcr.io/shop/api:2.8.0-rc1"}
    env = api["spec"]["template"]["spec"]["containers"][1]["env"]
    assert env == [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {
        "name": "ephem-database", "key": "url"}}}]
    assert api["metadata"]["labels"][ENV_ID] == "1"
    assert "deployment.kubernetes.io/revision" not in api["metadata"]["annotations"]
    assert {e["manager"] for e in api["metadata"]["managedFields"]} == {"ephem"}
    web = cluster.get("apps/v1/deployments", TARGET, "web")
    assert web is not None
    assert web["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "ghcr.io/shop/web:5.1.0@sha256:ab12"  # the digest kept
    redis = cluster.get("apps/v1/deployments", TARGET, "redis")
    assert redis is not None and \
        redis["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7"
    service = cluster.get("v1/services", TARGET, "api")
    assert service is not None
    assert "clusterIP" not in service["spec"] and "clusterIPs" not in service["spec"]
    assert "nodePort" not in service["spec"]["ports"][0]
    ingress = cluster.get("networking.k8s.io/v1/ingresses", TARGET, "api")
    assert ingress is not None
    assert ingress["spec"]["rules"][0]["host"] == "api-pr-1.preview.example.com"
    assert ingress["spec"]["tls"][0]["hosts"] == ["api-pr-1.preview.example.com"]
    route = cluster.get("gateway.networking.k8s.io/v1/httproutes", TARGET, "web")
    assert route is not None and route["spec"]["hostnames"] == ["shop-pr-1.preview.example.com"]
    assert cluster.get("v1/secrets", TARGET, "api-keys") is not None
    assert cluster.get("v1/secrets", TARGET, "staging-only") is None
    secret = cluster.get("v1/secrets", TARGET, "ephem-database")
    assert secret is not None and base64.b64decode(secret["data"]["url"]).decode() == DB_URL
    assert cluster.get("v1/configmaps", TARGET, "shop-config") is not None
    assert cluster.get("batch/v1/cronjobs", TARGET, "worker-nightly") is None  # not copied

    assert result.links == {"api": "https://api-pr-1.preview.example.com/v1",
                            "web": "https://shop-pr-1.preview.example.com/"}
    assert "4/4 components ready" in said
    applies = [r for r in cluster.requests("PATCH") if "fieldManager=ephem" in r[1]]
    assert applies and all(r[2].startswith("application/apply-patch+yaml") for r in applies)

    await phase.apply(context)  # again: converges, nothing new
    assert cluster.get("apps/v1/deployments", TARGET, "api-server") is not None

    await phase.destroy(context)
    left = cluster.kinds_in(TARGET)
    assert left == {}, left
    assert cluster.get("v1/namespaces", None, TARGET) is not None  # the infra phase's
    assert cluster.kinds_in(SOURCE)  # the reference untouched
    await phase.destroy(context)  # twice is fine


async def test_the_wait_counts_components_as_their_rollouts_finish(cluster: Cluster) -> None:
    staging(cluster)
    said: list[str] = []
    versions = {"api": "2.7.3", "web": "5.1.0", "worker": "2.7.3"}
    d = deployer(cluster)

    async def controller() -> None:
        for kind, name in (("deployments", "redis"), ("deployments", "api-server"),
                           ("deployments", "web"), ("statefulsets", "worker")):
            for _ in range(500):  # until the deployer has applied it
                if cluster.get(f"apps/v1/{kind}", TARGET, name) is not None:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.15)
            cluster.roll_out(f"apps/v1/{kind}", TARGET, name)

    rolling = asyncio.create_task(controller())
    await d.deploy(ctx(versions, said), database_url=None)
    await rolling
    counts = [s for s in said if "components ready" in s]
    assert counts[0].startswith("0/4 components ready")
    assert counts[-1] == "4/4 components ready"
    assert len(counts) >= 3  # they came one by one, not all at the end


def pod(c: Cluster, name: str, app: str, status: dict[str, Any]) -> None:
    c.put({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": TARGET, "labels": {"app": app}},
           "spec": {"containers": [{"name": "api", "image": "x"}]}})
    c.set_status("v1/pods", TARGET, name, status)


async def test_failures_name_the_component_and_the_reason(cluster: Cluster) -> None:
    staging(cluster)
    for kind, name in (("deployments", "redis"), ("deployments", "web"),
                       ("statefulsets", "worker")):
        cluster.put(workload("Deployment" if kind == "deployments" else "StatefulSet", name,
                             [("x", "x:1")], namespace=TARGET))
    pod(cluster, "api-server-5d9f-abcde", "api-server", {"containerStatuses": [{
        "name": "api", "state": {"waiting": {
            "reason": "ImagePullBackOff",
            "message": 'Back-off pulling image "ghcr.io/shop/api:9.9.9"'}}}]})
    pod(cluster, "web-7c8d-fghij", "web", {"containerStatuses": [{
        "name": "web", "lastState": {"terminated": {"exitCode": 1}},
        "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]})
    cluster.emulator[f"get /api/v1/namespaces/{TARGET}/pods/web-7c8d-fghij/log"] << (
        b"starting web 5.1.0\nconnecting to " + DB_URL.encode() + b"\nFATAL: no config\n")
    versions = {"api": "9.9.9", "web": "5.1.0", "worker": "2.7.3"}
    with pytest.raises(ComponentFailed) as err:
        await deployer(cluster).deploy(ctx(versions), database_url=DB_URL)
    reason = err.value.reason
    assert 'api: pod api-server-5d9f-abcde ImagePullBackOff: Back-off pulling image ' \
        '"ghcr.io/shop/api:9.9.9"' in reason
    assert "web: pod web-7c8d-fghij CrashLoopBackOff: the last run exited with code 1" in reason
    assert err.value.details is not None and "FATAL: no config" in err.value.details
    assert "pw-of-the-environment" not in err.value.details


async def test_unschedulable_is_reported_at_the_timeout_with_the_event(
        cluster: Cluster) -> None:
    staging(cluster)
    cluster.rollout = "manual"
    pod(cluster, "worker-0", "worker", {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available"}]})
    cluster.put({"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": "worker-0.1", "namespace": TARGET},
                 "involvedObject": {"kind": "Pod", "name": "worker-0", "namespace": TARGET},
                 "reason": "FailedScheduling",
                 "message": "0/3 nodes are available: 3 Insufficient memory."})
    with pytest.raises(ComponentFailed) as err:
        await deployer(cluster, rollout_timeout="1s").deploy(
            ctx({"api": "1", "web": "1", "worker": "1"}), database_url=None)
    assert ("worker: pod worker-0 cannot be scheduled: 0/3 nodes are available: "
            "3 Insufficient memory.") in err.value.reason
    assert "api: not available within 1s" in err.value.reason


async def test_a_set_naming_a_component_the_namespace_lacks(cluster: Cluster) -> None:
    staging(cluster)
    with pytest.raises(Exception) as err:
        await deployer(cluster).deploy(ctx({"api": "1", "search": "1"}), database_url=None)
    assert "search is in the release set, but namespace staging has nothing" in str(err.value)
