"""A Kubernetes namespace per environment, with its quota, limits and default network policy.

Why: components of an environment need a place of their own in the cluster, bounded (a
ResourceQuota and a LimitRange from the blueprint) and fenced (a NetworkPolicy admitting traffic
only from inside the namespace and from the ingress controller's namespace). Everything is
applied with server-side apply under the field manager `ephem`, so a re-apply patches what
changed and leaves other managers' fields alone. The namespace carries Ephem's marks (labels
`app.kubernetes.io/managed-by: ephem`, the environment id and owner; the expiry as an
annotation), which is how `orphans.py` finds namespaces no live environment owns.

The official `kubernetes` client blocks; every call runs in a worker thread
(`asyncio.to_thread`) so the event loop never waits on the cluster.

Neighbours: `phase.py` composes this provider after Terraform's; the code phase reads the
namespace name from the infra outputs under the key `namespace`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from bot.config import KubernetesConfig
from bot.errors import PermanentError, TemporaryError
from pipelines.base import PhaseContext

T = TypeVar("T")

MANAGER = "ephem"
MANAGED_BY = "app.kubernetes.io/managed-by"
ENV_ID = "ephem.dev/environment-id"
ENV_NAME = "ephem.dev/environment"
OWNER = "ephem.dev/owner"
EXPIRES = "ephem.dev/expires-at"
SELECTOR = f"{MANAGED_BY}=ephem"
_APPLY = "application/apply-patch+yaml"
_POLL = 0.5
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")
# The client's config loaders carry no annotations; typed here once.
_in_cluster: Callable[..., None] = config.load_incluster_config
_from_kubeconfig: Callable[..., client.ApiClient] = config.new_client_from_config


def label_value(text: str) -> str:
    """A Kubernetes label value: at most 63 characters of [A-Za-z0-9_.-], alphanumeric ends."""
    return _LABEL_VALUE.sub("_", text)[:63].strip("_.-")


def load_api(cfg: KubernetesConfig) -> client.ApiClient:
    """An ApiClient from the blueprint: in-cluster, or a kubeconfig (and context)."""
    try:
        if cfg.in_cluster:
            configuration = client.Configuration()
            _in_cluster(client_configuration=configuration)
            return client.ApiClient(configuration)
        return _from_kubeconfig(
            config_file=str(cfg.kubeconfig) if cfg.kubeconfig else None, context=cfg.context)
    except (ConfigException, OSError) as exc:
        raise PermanentError(f"cannot load the Kubernetes configuration: {exc}") from None


class NamespaceProvider:
    """Creates (server-side apply) and deletes one environment's namespace."""

    label = "kubernetes"

    def __init__(self, cfg: KubernetesConfig, *,
                 api_client: client.ApiClient | None = None) -> None:
        self.cfg = cfg
        self._api = api_client
        self._lock = asyncio.Lock()

    def namespace(self, name: str) -> str:
        return self.cfg.namespace.replace("{name}", name)

    async def _client(self) -> client.ApiClient:
        async with self._lock:
            if self._api is None:
                self._api = await asyncio.to_thread(load_api, self.cfg)
            return self._api

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking client call in a thread; transport failures become TemporaryErrors."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as exc:
            if exc.status in (429, 500, 502, 503, 504) or exc.status == 0:
                raise TemporaryError(f"the Kubernetes API answered {exc.status} "
                                     f"({exc.reason})") from None
            raise
        except HTTPError as exc:
            raise TemporaryError(f"cannot reach the Kubernetes API ({type(exc).__name__})"
                                 ) from None

    # ------------------------------------------------------------------ apply

    async def describe(self, ctx: PhaseContext) -> str:
        return f"namespace {self.namespace(ctx.name)}"

    async def apply(self, ctx: PhaseContext) -> tuple[dict[str, Any], str]:
        """Apply the namespace and its objects; (outputs, summary)."""
        ns = self.namespace(ctx.name)
        core = client.CoreV1Api(await self._client())
        net = client.NetworkingV1Api(await self._client())
        labels = self.labels(ctx)
        await ctx.emit(f"applying namespace {ns}")
        await self._apply(core.patch_namespace, ns, self._namespace_body(ctx, labels))
        made = ["namespace"]
        if self.cfg.quota:
            await ctx.emit(f"applying resource quota in {ns}")
            await self._apply(core.patch_namespaced_resource_quota, "ephem", ns, {
                "apiVersion": "v1", "kind": "ResourceQuota",
                "metadata": {"name": "ephem", "labels": labels},
                "spec": {"hard": dict(self.cfg.quota)}})
            made.append("quota")
        limits = self._limits()
        if limits:
            await ctx.emit(f"applying limit range in {ns}")
            await self._apply(core.patch_namespaced_limit_range, "ephem", ns, {
                "apiVersion": "v1", "kind": "LimitRange",
                "metadata": {"name": "ephem", "labels": labels},
                "spec": {"limits": [{"type": "Container", **limits}]}})
            made.append("limits")
        if self.cfg.network_policy:
            await ctx.emit(f"applying network policy in {ns}")
            await self._apply(net.patch_namespaced_network_policy, "ephem-default", ns,
                              self._policy(labels))
            made.append("network policy")
        outputs = {"namespace": ns}
        return outputs, f"namespace {ns} ({', '.join(made)})"

    def labels(self, ctx: PhaseContext) -> dict[str, str]:
        return {**self.cfg.labels, MANAGED_BY: "ephem", ENV_ID: str(ctx.env_id),
                ENV_NAME: label_value(ctx.name), OWNER: label_value(ctx.owner_id)}

    def _namespace_body(self, ctx: PhaseContext, labels: Mapping[str, str]) -> dict[str, Any]:
        annotations = {EXPIRES: ctx.expires_at.isoformat()} if ctx.expires_at else {}
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": self.namespace(ctx.name), "labels": dict(labels),
                             "annotations": annotations}}

    def _limits(self) -> dict[str, dict[str, str]]:
        lim = self.cfg.limits
        found = {"default": lim.default, "defaultRequest": lim.default_request, "max": lim.max}
        return {k: dict(v) for k, v in found.items() if v}

    def _policy(self, labels: Mapping[str, str]) -> dict[str, Any]:
        sources: list[dict[str, Any]] = [{"podSelector": {}}]
        if self.cfg.ingress_namespace:
            sources.append({"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": self.cfg.ingress_namespace}}})
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "ephem-default", "labels": dict(labels)},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": sources}]}}

    async def _apply(self, patch: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self._call(patch, *args, field_manager=MANAGER, force=True,
                                    _content_type=_APPLY)
        except ApiException as exc:
            raise PermanentError(f"Kubernetes refused {args[0]}: {exc.status} "
                                 f"{_message(exc)}") from None

    # ------------------------------------------------------------------ destroy

    async def destroy(self, ctx: PhaseContext) -> None:
        await self.delete(self.namespace(ctx.name), ctx.emit)

    async def delete(self, ns: str, emit: Callable[[str], Awaitable[None]]) -> None:
        """Delete the namespace and wait until it is gone; say what holds it on timeout."""
        core = client.CoreV1Api(await self._client())
        try:
            await self._call(core.delete_namespace, ns)
        except ApiException as exc:
            if exc.status == 404:
                await emit(f"namespace {ns} is already gone")
                return
            raise PermanentError(f"Kubernetes refused to delete namespace {ns}: "
                                 f"{exc.status} {_message(exc)}") from None
        await emit(f"namespace {ns} is terminating")
        deadline = time.monotonic() + self.cfg.destroy_timeout.total_seconds()
        while True:
            try:
                current = await self._call(core.read_namespace, ns)
            except ApiException as exc:
                if exc.status == 404:
                    await emit(f"namespace {ns} deleted")
                    return
                raise
            if time.monotonic() >= deadline:
                raise TemporaryError(f"namespace {ns} is still terminating after "
                                     f"{self.cfg.destroy_timeout.total_seconds():g} s: "
                                     f"{await self._stuck(core, current)}", delay=30.0)
            await asyncio.sleep(_POLL)

    async def _stuck(self, core: client.CoreV1Api, ns: Any) -> str:
        """What holds a terminating namespace: its finalizers, its conditions, what is left."""
        parts: list[str] = []
        finalizers = list(ns.metadata.finalizers or []) + list(
            (ns.spec.finalizers if ns.spec else None) or [])
        if finalizers:
            parts.append(f"finalizers {', '.join(finalizers)}")
        for cond in (ns.status.conditions if ns.status else None) or []:
            if cond.status == "True" and cond.type in ("NamespaceContentRemaining",
                                                       "NamespaceFinalizersRemaining",
                                                       "NamespaceDeletionContentFailure"):
                parts.append(cond.message)
        return "; ".join(parts) or "nothing reported (check the namespace controller)"

    # ------------------------------------------------------------------ orphans

    async def managed(self) -> list[tuple[str, int | None]]:
        """(namespace, environment id) of every namespace carrying Ephem's label."""
        core = client.CoreV1Api(await self._client())
        listed = await self._call(core.list_namespace, label_selector=SELECTOR)
        found: list[tuple[str, int | None]] = []
        for item in listed.items:
            meta = item.metadata
            if meta is None or not meta.name:
                continue
            raw = (meta.labels or {}).get(ENV_ID, "")
            found.append((meta.name, int(raw) if raw.isdigit() else None))
        return found

    def close(self) -> None:
        if self._api is not None:
            close: Callable[[], None] = self._api.close
            close()


def _message(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message", exc.reason))
    except ValueError:
        return str(exc.reason)
