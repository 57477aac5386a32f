"""The few Kubernetes API calls the code phase makes, on the official client's asyncio transport.

Why not the generated typed models: the code phase copies objects it does not own — whatever a
reference namespace's Deployments, Services or HTTPRoutes carry — and a round trip through
typed models drops every field the model does not know (HTTPRoute has no model at all). So
objects stay JSON dicts, and the official client (`kubernetes.aio`: configuration from a
kubeconfig and context or in-cluster, authentication, TLS, its aiohttp session) only carries
them. Being asyncio, nothing blocks the event loop and many calls can be in flight at once.

Failures become the two kinds the runner understands: the API unreachable, throttling (429),
a conflict or a server error (5xx) are `TemporaryError`s; anything else the API refuses (403,
422, …) is a `PermanentError`. Both name the call ("listing deployments in staging"). A list of
a kind the cluster does not serve (no Gateway API, say) is empty, not an error.

Every call is counted by verb and resource (`calls`), for the benchmark and the tests that
check how many calls a resolution or a deployment takes.

Neighbours: `sources.ClusterReleases` lists a reference namespace's workloads;
`kubernetes.KubernetesDeployer` copies, applies, waits and removes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bot.config import KubeAccess
from bot.errors import PermanentError, TemporaryError

FIELD_MANAGER = "ephem"
_TEMPORARY = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Kind:
    """A namespaced resource: how it is spelled in objects and in URLs."""

    api_version: str  # `v1`, `apps/v1`
    kind: str
    plural: str

    def path(self, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        path = f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
        if sub is not None:
            path += f"/{sub}"
        return path


DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
STATEFULSET = Kind("apps/v1", "StatefulSet", "statefulsets")
CRONJOB = Kind("batch/v1", "CronJob", "cronjobs")
SERVICE = Kind("v1", "Service", "services")
CONFIGMAP = Kind("v1", "ConfigMap", "configmaps")
SECRET = Kind("v1", "Secret", "secrets")
INGRESS = Kind("networking.k8s.io/v1", "Ingress", "ingresses")
HTTPROUTE = Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes")
POD = Kind("v1", "Pod", "pods")
EVENT = Kind("v1", "Event", "events")
KINDS = {k.kind: k for k in (DEPLOYMENT, STATEFULSET, CRONJOB, SERVICE, CONFIGMAP, SECRET,
                             INGRESS, HTTPROUTE, POD, EVENT)}


class Kube:
    """One API connection (opened on first use); `close()` when done."""

    def __init__(self, access: KubeAccess) -> None:
        self._access = access
        self._client: Any = None
        self.calls: Counter[str] = Counter()  # "list deployments" → how many

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def list_objects(self, kind: Kind, namespace: str) -> list[dict[str, Any]]:
        """Every object of `kind` in `namespace`, in one call."""
        found = await self._call("GET", kind.path(namespace), what=f"list {kind.plural}",
                                 doing=f"listing {kind.plural} in {namespace}", missing_ok=True)
        items = found.get("items") if isinstance(found, Mapping) else None
        return [dict(i, kind=kind.kind, apiVersion=kind.api_version)
                for i in items or () if isinstance(i, Mapping)]

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        found = await self._call("GET", kind.path(namespace, name), what=f"get {kind.plural}",
                                 doing=f"reading {kind.kind} {namespace}/{name}",
                                 missing_ok=True)
        return dict(found) if isinstance(found, Mapping) and found else None

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of `obj` (field manager `ephem`, taking over conflicting fields)."""
        kind = KINDS[obj["kind"]]
        meta = obj["metadata"]
        found = await self._call(
            "PATCH", kind.path(meta["namespace"], meta["name"]), what=f"apply {kind.plural}",
            doing=f"applying {kind.kind} {meta['namespace']}/{meta['name']}",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")], body=obj,
            content_type="application/apply-patch+yaml")
        return dict(found) if isinstance(found, Mapping) else {}

    async def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        found = await self._call(
            "DELETE", kind.path(namespace, name), what=f"delete {kind.plural}",
            doing=f"deleting {kind.kind} {namespace}/{name}", missing_ok=True,
            body={"kind": "DeleteOptions", "apiVersion": "v1",
                  "propagationPolicy": "Background"})
        return found is not None

    async def log(self, namespace: str, pod: str, *, container: str | None, lines: int,
                  previous: bool) -> str:
        """The last `lines` lines a pod's container wrote (its previous instance's, after a
        crash); empty when there is none."""
        query = [("tailLines", str(lines))]
        if container:
            query.append(("container", container))
        if previous:
            query.append(("previous", "true"))
        found = await self._call("GET", POD.path(namespace, pod, "log"), what="log pods",
                                 doing=f"reading the log of pod {namespace}/{pod}",
                                 query=query, missing_ok=True, raw=True)
        return found if isinstance(found, str) else ""

    # ------------------------------------------------------------------ transport

    async def _connect(self) -> Any:
        if self._client is None:
            from kubernetes.aio import client, config

            try:
                if self._access.in_cluster:
                    configuration = client.Configuration()
                    config.load_incluster_config(  # type: ignore[no-untyped-call]
                        client_configuration=configuration)
                    self._client = client.ApiClient(configuration=configuration)
                else:
                    path = str(self._access.kubeconfig) if self._access.kubeconfig else None
                    self._client = await config.new_client_from_config(  # type: ignore[no-untyped-call]
                        config_file=path, context=self._access.context, persist_config=False)
            except (config.ConfigException, OSError, ValueError) as exc:
                raise PermanentError(f"cannot configure the Kubernetes client: {exc}") from None
        return self._client

    async def _call(self, method: str, path: str, *, what: str, doing: str,
                    query: list[tuple[str, str]] | None = None, body: Any = None,
                    content_type: str = "application/json", missing_ok: bool = False,
                    raw: bool = False) -> Any:
        api = await self._connect()
        self.calls[what] += 1
        headers = {"Accept": "*/*" if raw else "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        timeout = self._access.request_timeout.total_seconds()
        try:
            request = await api.param_serialize(
                method, path, query_params=query or None, header_params=headers, body=body,
                auth_settings=["BearerToken"])
            response = await api.call_api(*request, _request_timeout=timeout)
            data: bytes = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TemporaryError(f"{doing}: cannot reach the Kubernetes API "
                                 f"({type(exc).__name__})") from None
        status = int(response.status)
        if status == 404 and missing_ok:
            return None
        if status >= 400:
            reason = f"{doing}: the Kubernetes API answered {status} ({_message(data)})"
            if status in _TEMPORARY:
                raise TemporaryError(reason)
            raise PermanentError(reason)
        if raw:
            return data.decode("utf-8", errors="replace")
        try:
            return json.loads(data) if data else {}
        except ValueError:
            raise PermanentError(f"{doing}: the Kubernetes API answered something that is "
                                 "not JSON") from None


def _message(data: bytes) -> str:
    """The `message` of a Status answer, kept short; else the start of the body."""
    try:
        status = json.loads(data)
    except ValueError:
        status = None
    text = str(status.get("message") or status.get("reason") or "") \
        if isinstance(status, Mapping) else data[:200].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text[:200] + ("…" if len(text) > 200 else "")
