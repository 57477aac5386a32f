"""The emulated cluster of `tests/kube.py`, through the official `kubernetes` client: the fixes
to kmock and the behaviour the phases' tests rely on."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.kube import APPLY, Cluster, kube_fixture  # noqa: F401

NS = "team-a"


def wait_until(check: Callable[[], Any], *, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError("the condition did not come true in time")


def core(kube: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api_client())


def test_namespaces_are_the_cluster_scoped_resource(kube: Cluster) -> None:
    api = core(kube)
    made = api.create_namespace({"metadata": {"name": NS, "labels": {"team": "a"}}})
    assert made.metadata.uid and made.status.phase == "Active"
    assert api.read_namespace(NS).metadata.labels == {"team": "a"}
    api.create_namespace({"metadata": {"name": "other"}})
    listed = api.list_namespace(label_selector="team=a")
    assert [n.metadata.name for n in listed.items] == [NS]
    assert {n.metadata.name for n in api.list_namespace().items} == {NS, "other"}
    with pytest.raises(ApiException) as conflict:
        api.create_namespace({"metadata": {"name": NS}})
    assert conflict.value.status == 409


def test_missing_objects_are_404_not_500(kube: Cluster) -> None:
    api = core(kube)
    for call in (lambda: api.read_namespace("nope"),
                 lambda: api.delete_namespace("nope"),
                 lambda: api.patch_namespace("nope", {"metadata": {"labels": {"a": "b"}}}),
                 lambda: api.read_namespaced_config_map("nope", "nope"),
                 lambda: api.delete_namespaced_config_map("nope", "nope")):
        with pytest.raises(ApiException) as missing:
            call()
        assert missing.value.status == 404


def test_namespaced_objects_need_a_live_namespace_and_list_per_kind(kube: Cluster) -> None:
    api = core(kube)
    cm = {"metadata": {"name": "settings", "labels": {"app": "x"}}, "data": {"k": "v"}}
    with pytest.raises(ApiException) as no_namespace:
        api.create_namespaced_config_map(NS, cm)
    assert no_namespace.value.status == 404
    api.create_namespace({"metadata": {"name": NS}})
    api.create_namespace({"metadata": {"name": "b"}})
    api.create_namespaced_config_map(NS, cm)
    api.create_namespaced_config_map("b", {"metadata": {"name": "other"}})
    assert [c.metadata.name for c in api.list_namespaced_config_map(NS).items] == ["settings"]
    assert api.list_namespaced_config_map(NS, label_selector="app in (x,y)").items
    assert not api.list_namespaced_config_map(NS, label_selector="app!=x").items
    assert not api.list_namespaced_resource_quota(NS).items  # a known kind with no objects
    everywhere = api.list_config_map_for_all_namespaces()
    assert {(c.metadata.namespace, c.metadata.name) for c in everywhere.items} == {
        (NS, "settings"), ("b", "other")}
    assert kube.kinds_in(NS) == {"configmaps.": 1}


def test_server_side_apply_creates_takes_over_and_prunes(kube: Cluster) -> None:
    api = core(kube)
    api.create_namespace({"metadata": {"name": NS}})
    quota = {"apiVersion": "v1", "kind": "ResourceQuota",
             "metadata": {"name": "q", "labels": {"a": "1", "b": "2"}},
             "spec": {"hard": {"pods": "10", "cpu": "4"}}}
    made = api.patch_namespaced_resource_quota("q", NS, quota, field_manager="ephem",
                                               _content_type=APPLY)
    assert made.spec.hard == {"pods": "10", "cpu": "4"}
    assert [(m.manager, m.operation) for m in made.metadata.managed_fields] == [
        ("ephem", "Apply")]
    # Someone else changes a field Ephem applied: a plain apply conflicts, a forced one wins.
    kube.patch("v1/resourcequotas", NS, "q", {"spec": {"hard": {"pods": "99"}}})
    with pytest.raises(ApiException) as conflict:
        api.patch_namespaced_resource_quota("q", NS, quota, field_manager="ephem",
                                            _content_type=APPLY)
    assert conflict.value.status == 409
    smaller = {**quota, "metadata": {"name": "q", "labels": {"a": "1"}},
               "spec": {"hard": {"pods": "10"}}}
    again = api.patch_namespaced_resource_quota("q", NS, smaller, field_manager="ephem",
                                                force=True, _content_type=APPLY)
    assert again.spec.hard == {"pods": "10"}  # cpu was Ephem's and is no longer applied
    assert again.metadata.labels == {"a": "1"}
    assert int(again.metadata.generation) == 3
    patched = api.patch_namespaced_resource_quota(
        "q", NS, [{"op": "add", "path": "/metadata/labels/c", "value": "3"}])
    assert patched.metadata.labels == {"a": "1", "c": "3"}
    with pytest.raises(ApiException) as no_manager:
        api.patch_namespaced_resource_quota("q", NS, quota, _content_type=APPLY)
    assert no_manager.value.status == 422


def test_stuck_namespace_reports_what_holds_it_until_released(kube: Cluster) -> None:
    api = core(kube)
    api.create_namespace({"metadata": {"name": NS}})
    api.create_namespaced_config_map(NS, {"metadata": {"name": "plain"}})
    api.create_namespaced_config_map(NS, {"metadata": {"name": "held",
                                                       "finalizers": ["example.com/hold"]}})
    api.delete_namespace(NS)
    assert api.read_namespace(NS).status.phase == "Terminating"
    stuck = wait_until(lambda: api.read_namespace(NS).status.conditions)
    messages = " ".join(c.message for c in stuck)
    assert "configmaps. has 1 resource instances" in messages
    assert "example.com/hold in 1 resource instances" in messages
    assert kube.get("v1/configmaps", NS, "plain") is None
    with pytest.raises(ApiException) as terminating:
        api.create_namespaced_config_map(NS, {"metadata": {"name": "late"}})
    assert terminating.value.status == 403
    kube.patch("v1/configmaps", NS, "held", {"metadata": {"finalizers": None}})
    wait_until(lambda: kube.get("v1/namespaces", None, NS) is None)
    with pytest.raises(ApiException) as gone:
        api.read_namespace(NS)
    assert gone.value.status == 404


def test_rollouts_are_set_by_the_test_or_the_auto_controller(kube: Cluster) -> None:
    api = core(kube)
    apps = client.AppsV1Api(kube.api_client())
    api.create_namespace({"metadata": {"name": NS}})
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "api"},
                  "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
                           "template": {"metadata": {"labels": {"app": "api"}},
                                        "spec": {"containers": [{"name": "api",
                                                                 "image": "api:1"}]}}}}
    apps.create_namespaced_deployment(NS, deployment)
    assert apps.read_namespaced_deployment("api", NS).status.ready_replicas is None
    kube.roll_out("apps/v1/deployments", NS, "api")
    ready = apps.read_namespaced_deployment_status("api", NS).status
    assert (ready.ready_replicas, ready.observed_generation) == (2, 1)
    apps.patch_namespaced_deployment("api", NS, {"spec": {"replicas": 3}})
    moved = apps.read_namespaced_deployment("api", NS)
    assert moved.metadata.generation == 2 and moved.status.observed_generation == 1
    kube.stall_rollout("apps/v1/deployments", NS, "api")
    stalled = apps.read_namespaced_deployment("api", NS).status.conditions
    assert any(c.reason == "ProgressDeadlineExceeded" for c in stalled)
    kube.rollout = "auto"
    wait_until(lambda: apps.read_namespaced_deployment("api", NS).status.ready_replicas == 3)
    apps.patch_namespaced_deployment_status("api", NS, {"status": {"readyReplicas": 1}})
    assert apps.read_namespaced_deployment("api", NS).spec.replicas == 3


def test_kubeconfig_and_injected_failures(kube: Cluster) -> None:
    api = config.new_client_from_config(config_file=str(kube.kubeconfig), context=kube.context)
    try:
        v1 = client.CoreV1Api(api)
        v1.create_namespace({"metadata": {"name": NS}})
        kube.fail("GET", r"^/api/v1/namespaces/team-a$", status=503)
        with pytest.raises(ApiException) as failed:
            v1.read_namespace(NS)
        assert failed.value.status == 503
        assert v1.read_namespace(NS).metadata.name == NS
    finally:
        api.close()
    assert [(m, p) for m, p, _ in kube.requests("POST")] == [("POST", "/api/v1/namespaces")]
