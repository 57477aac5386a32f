"""The namespace provider through the real `kubernetes` client against the emulated cluster:
namespace, quota, limits and policy with Ephem's labels; patch on re-apply; destroy; a namespace
stuck terminating says what holds it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.config import Blueprint, KubernetesConfig, LimitsConfig
from bot.domain import DataMode, DataRequest, ReleaseSet
from bot.errors import TemporaryError
from pipelines.base import PhaseContext
from pipelines.infra.namespace import ENV_ID, EXPIRES, MANAGED_BY, OWNER, NamespaceProvider
from tests.kube import Cluster, kube_fixture  # noqa: F401

EXPIRY = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def ctx(env_id: int = 7, name: str = "pr-142", said: list[str] | None = None) -> PhaseContext:
    async def emit(text: str) -> None:
        if said is not None:
            said.append(text)

    return PhaseContext(env_id=env_id, name=name, owner_id="U_ANA",
                        release_set=ReleaseSet({}), data=DataRequest(DataMode.NONE),
                        blueprint=Blueprint(), outputs={},
                        emit=emit, expires_at=EXPIRY)


def provider(kube: Cluster, **overrides: object) -> NamespaceProvider:
    settings: dict[str, object] = {
        "kubeconfig": kube.kubeconfig, "context": kube.context, "labels": {"team": "shop"},
        "quota": {"pods": "20", "requests.cpu": "4"},
        "limits": LimitsConfig(default={"cpu": "500m"}, default_request={"cpu": "100m"}),
        "ingress_namespace": "ingress-nginx", "destroy_timeout": timedelta(seconds=2)}
    return NamespaceProvider(KubernetesConfig.model_validate({**settings, **overrides}))


async def test_apply_makes_namespace_quota_limits_and_policy_with_labels(kube: Cluster) -> None:
    outputs, summary = await provider(kube).apply(ctx())
    assert outputs == {"namespace": "ephem-pr-142"}
    assert "quota" in summary and "network policy" in summary
    ns = kube.get("v1/namespaces", None, "ephem-pr-142")
    assert ns is not None
    labels = ns["metadata"]["labels"]
    assert labels[MANAGED_BY] == "ephem" and labels[ENV_ID] == "7"
    assert labels[OWNER] == "U_ANA" and labels["team"] == "shop"
    assert ns["metadata"]["annotations"][EXPIRES] == EXPIRY.isoformat()
    assert [m["manager"] for m in ns["metadata"]["managedFields"]] == ["ephem"]
    quota = kube.get("v1/resourcequotas", "ephem-pr-142", "ephem")
    assert quota is not None and quota["spec"]["hard"] == {"pods": "20", "requests.cpu": "4"}
    assert quota["metadata"]["labels"][ENV_ID] == "7"
    limits = kube.get("v1/limitranges", "ephem-pr-142", "ephem")
    assert limits is not None
    assert limits["spec"]["limits"] == [{"type": "Container", "default": {"cpu": "500m"},
                                         "defaultRequest": {"cpu": "100m"}}]
    policy = kube.get("networking.k8s.io/v1/networkpolicies", "ephem-pr-142", "ephem-default")
    assert policy is not None
    assert policy["spec"]["podSelector"] == {} and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "ingress-nginx"}}}]}]
    applies = [r for r in kube.requests("PATCH") if "fieldManager=ephem" in r[1]]
    assert applies and all(r[2] == "application/apply-patch+yaml" for r in applies)


async def test_reapply_patches_what_changed_and_takes_back_its_fields(kube: Cluster) -> None:
    await provider(kube).apply(ctx())
    kube.patch("v1/resourcequotas", "ephem-pr-142", "ephem",
               {"spec": {"hard": {"pods": "999"}}})
    changed = provider(kube, quota={"pods": "30"}, network_policy=False)
    await changed.apply(ctx())
    quota = kube.get("v1/resourcequotas", "ephem-pr-142", "ephem")
    assert quota is not None and quota["spec"]["hard"] == {"pods": "30"}  # cpu pruned
    assert quota["metadata"]["generation"] == 3
    assert len(kube.list("v1/namespaces", labels=f"{MANAGED_BY}=ephem")) == 1


async def test_destroy_waits_until_gone_and_twice_is_fine(kube: Cluster) -> None:
    p = provider(kube)
    await p.apply(ctx())
    said: list[str] = []
    await p.destroy(ctx(said=said))
    assert kube.get("v1/namespaces", None, "ephem-pr-142") is None
    assert kube.get("v1/resourcequotas", "ephem-pr-142", "ephem") is None
    assert "namespace ephem-pr-142 is terminating" in said
    assert said[-1] == "namespace ephem-pr-142 deleted"
    await p.destroy(ctx(said=said))
    assert said[-1] == "namespace ephem-pr-142 is already gone"


async def test_a_stuck_namespace_says_what_holds_it(kube: Cluster) -> None:
    p = provider(kube)
    await p.apply(ctx())
    kube.put({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "held", "namespace": "ephem-pr-142",
                           "finalizers": ["shop.example/backup"]}})
    with pytest.raises(TemporaryError) as stuck:
        await p.destroy(ctx())
    assert "still terminating" in stuck.value.reason
    assert "shop.example/backup in 1 resource instances" in stuck.value.reason
    assert "configmaps. has 1 resource instances" in stuck.value.reason
    kube.patch("v1/configmaps", "ephem-pr-142", "held", {"metadata": {"finalizers": None}})
    await p.destroy(ctx())  # the retry finds it gone, or waits for it to go
    assert kube.get("v1/namespaces", None, "ephem-pr-142") is None
