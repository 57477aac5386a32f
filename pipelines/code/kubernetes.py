"""The `kubernetes` deployer: a reference namespace's workloads copied into the environment's
namespace, images pinned to the release set, rollouts awaited.

Why copying: the reference (staging) already is a working arrangement of Deployments,
StatefulSets, Services, ConfigMaps, Ingresses and HTTPRoutes; an environment is that
arrangement at other versions, with its own database and hosts. So each object is read from
the reference namespace (one list call per kind), stripped of what belongs to the source (status,
uid, resourceVersion, managedFields, clusterIP, nodePort, …), rewritten (namespace; images of
the components pinned to the set, with the same matching as the `cluster` source; hosts after
`hosts`; the data phase's connection in a Secret, referenced by `database_env`), labelled as
Ephem's and the environment's, and applied server-side with field manager `ephem`. Secrets are
copied only when `secrets` names them. Components of the namespace the set does not name are
copied as the reference runs them.

Waiting reads the rollouts with one list call per workload kind per poll, however many
components there are, so all of them are awaited at once; the card counts "3/7 components
ready". A component fails as soon as one of its pods shows a reason that does not heal by
waiting — ImagePullBackOff, ErrImagePull, InvalidImageName, CreateContainerConfigError,
CrashLoopBackOff (with its last log lines) — or its Deployment reports the progress deadline
exceeded; one that cannot be scheduled is reported at the timeout with the scheduler's event
message. Destroy deletes what carries the environment's label; the namespace is the infra
phase's.

Neighbours: `kube` (the API calls), `workloads` (matching and images, shared with the
`cluster` source), `plan` (what to deploy, readiness, failures).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

from bot import redaction
from bot.config import ClusterSource, KubeAccess, KubernetesDeployerConfig, Reference
from bot.domain import PhaseName
from bot.errors import PermanentError
from pipelines.base import PhaseContext
from pipelines.code import kube as k8s
from pipelines.code.plan import (
    LOG_LINES,
    ComponentFailed,
    Deployed,
    Plan,
    Readiness,
    combine,
    plan_release,
)
from pipelines.code.workloads import component_of, main_container, pin_image, pod_spec, split_image

MANAGED_BY = "app.kubernetes.io/managed-by"
ENV_ID = "ephem.dev/environment-id"
COPIED_FROM = "ephem.dev/copied-from"
COPIED = (k8s.DEPLOYMENT, k8s.STATEFULSET, k8s.SERVICE, k8s.CONFIGMAP, k8s.INGRESS,
          k8s.HTTPROUTE)
WORKLOADS = (k8s.DEPLOYMENT, k8s.STATEFULSET)
APPLY_CONCURRENCY = 16
_META_KEPT = ("name", "labels", "annotations")
_ANNOTATIONS_DROPPED = ("kubectl.kubernetes.io/last-applied-configuration",
                        "deployment.kubernetes.io/revision")
_FATAL = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
          "CrashLoopBackOff")

KubeFactory = Callable[[KubeAccess], k8s.Kube]
Obj = dict[str, Any]


class KubernetesDeployer:
    kind = "kubernetes"

    def __init__(self, cfg: KubernetesDeployerConfig, *, references: Mapping[str, Reference],
                 kube: KubeFactory = k8s.Kube) -> None:
        self.cfg = cfg
        self.references = dict(references)
        self.make_kube = kube

    async def describe(self, ctx: PhaseContext) -> str:
        return f"into namespace {self._target(ctx)}, copied from {self._source(ctx)}"

    def _target(self, ctx: PhaseContext) -> str:
        namespace = (ctx.outputs.get(PhaseName.INFRA) or {}).get("namespace")
        if not namespace:
            raise PermanentError("the kubernetes deployer needs the environment's namespace, "
                                 "which the infra phase makes: configure "
                                 "phases.infra.kubernetes")
        return str(namespace)

    def _source(self, ctx: PhaseContext) -> str:
        if self.cfg.source_namespace:
            return self.cfg.source_namespace
        ref = self.references.get(ctx.reference or "")
        source = ref.release_source if ref is not None else None
        if isinstance(source, ClusterSource):
            return source.namespace
        raise PermanentError("there is no namespace to copy from: set "
                             "phases.code.kubernetes.source_namespace, or match a reference "
                             "whose source is a cluster namespace")

    # ------------------------------------------------------------------ deploy

    async def deploy(self, ctx: PhaseContext, *, database_url: str | None) -> list[Deployed]:
        target, source = self._target(ctx), self._source(ctx)
        api = self.make_kube(self.cfg)
        try:
            listed = await asyncio.gather(*(api.list_objects(kind, source) for kind in COPIED))
            found = [obj for objects in listed for obj in objects]
            for name in self.cfg.secrets:
                secret = await api.get(k8s.SECRET, source, name)
                if secret is None:
                    raise PermanentError(f"secret {name}, listed in "
                                         f"phases.code.kubernetes.secrets, is not in {source}")
                found.append(dict(secret, kind="Secret", apiVersion="v1"))
            workloads = [o for o in found if o["kind"] in ("Deployment", "StatefulSet")]
            available = {c for o in workloads if (c := component_of(o, self.cfg))}
            plan = plan_release(ctx.release_set, available, where=f"namespace {source}")
            manifests = [self._copy(o, ctx=ctx, target=target, source=source, plan=plan,
                                    database=bool(database_url)) for o in found]
            if database_url and self.cfg.database_env:
                manifests.append(self._database_secret(ctx, target, database_url))
            await self._apply(api, manifests)
            await ctx.emit(f"applied {len(manifests)} objects to {target}")
            components = sorted({component_of(o, self.cfg) or o["metadata"]["name"]
                                 for o in workloads})
            await self._wait(api, ctx, target, components)
        finally:
            await api.close()
        links = self._links(manifests)
        versions = dict(ctx.release_set.versions)
        return [Deployed(c, versions.get(c), link=links.get(c), facts={"namespace": target})
                for c in components]

    def _copy(self, obj: Obj, *, ctx: PhaseContext, target: str, source: str, plan: Plan,
              database: bool) -> Obj:
        meta = obj.get("metadata") or {}
        new: Obj = {k: copy.deepcopy(v) for k, v in obj.items()
                    if k not in ("metadata", "status")}
        new_meta: Obj = {k: copy.deepcopy(meta[k]) for k in _META_KEPT if meta.get(k)}
        new_meta["namespace"] = target
        new_meta["labels"] = {**(new_meta.get("labels") or {}), MANAGED_BY: "ephem",
                              ENV_ID: str(ctx.env_id)}
        annotations = {k: v for k, v in (new_meta.get("annotations") or {}).items()
                       if k not in _ANNOTATIONS_DROPPED}
        annotations[COPIED_FROM] = f"{source}/{obj['kind']}/{meta.get('name')}"
        new_meta["annotations"] = annotations
        new["metadata"] = new_meta
        kind = obj["kind"]
        if kind == "Service":
            _strip_service(new.get("spec") or {})
        elif kind in ("Deployment", "StatefulSet"):
            self._pin(new, plan, database=database)
        elif kind == "Ingress":
            self._ingress_hosts(new, ctx)
        elif kind == "HTTPRoute":
            self._route_hosts(new, ctx)
        return new

    def _pin(self, obj: Obj, plan: Plan, *, database: bool) -> None:
        component = component_of(obj, self.cfg)
        spec = pod_spec(obj)
        if component is None or spec is None:
            return
        container = main_container(spec, component, self.cfg)
        if container is None:
            return
        assert isinstance(container, dict)
        version = {p.component: p.version for p in plan.components}.get(component)
        if version is not None and container.get("image"):
            repository, _ = split_image(str(container["image"]))
            container["image"] = pin_image(repository, version)
        if database and self.cfg.database_env:
            env = [e for e in container.get("env") or []
                   if e.get("name") != self.cfg.database_env]
            env.append({"name": self.cfg.database_env, "valueFrom": {"secretKeyRef": {
                "name": self.cfg.database_secret, "key": "url"}}})
            container["env"] = env

    def _host(self, ctx: PhaseContext, obj: Obj, original: str) -> str:
        if self.cfg.hosts is None:
            raise PermanentError(f"{obj['kind']} {obj['metadata']['name']} has hosts; set "
                                 "phases.code.kubernetes.hosts (like "
                                 "`{host}-{env}.preview.example.com`) so the copy gets its own")
        name = obj["metadata"]["name"]
        first = original.split(".", maxsplit=1)[0]
        return self.cfg.hosts.format(env=ctx.name, name=name, host=first,
                                     component=component_of(obj, self.cfg) or name)

    def _ingress_hosts(self, obj: Obj, ctx: PhaseContext) -> None:
        spec = obj.get("spec") or {}
        for rule in spec.get("rules") or []:
            if rule.get("host"):
                rule["host"] = self._host(ctx, obj, rule["host"])
        for tls in spec.get("tls") or []:
            tls["hosts"] = [self._host(ctx, obj, h) for h in tls.get("hosts") or []]

    def _route_hosts(self, obj: Obj, ctx: PhaseContext) -> None:
        spec = obj.get("spec") or {}
        if spec.get("hostnames"):
            spec["hostnames"] = [self._host(ctx, obj, h) for h in spec["hostnames"]]

    def _database_secret(self, ctx: PhaseContext, target: str, url: str) -> Obj:
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": self.cfg.database_secret, "namespace": target,
                             "labels": {MANAGED_BY: "ephem", ENV_ID: str(ctx.env_id)}},
                "data": {"url": base64.b64encode(url.encode()).decode()}}

    async def _apply(self, api: k8s.Kube, manifests: list[Obj]) -> None:
        gate = asyncio.Semaphore(APPLY_CONCURRENCY)

        async def one(obj: Obj) -> None:
            async with gate:
                await api.apply(obj)

        # ConfigMaps, Secrets and Services before the workloads that use them.
        first = [o for o in manifests if o["kind"] in ("ConfigMap", "Secret", "Service")]
        await asyncio.gather(*(one(o) for o in first))
        await asyncio.gather(*(one(o) for o in manifests if o not in first))

    def _links(self, manifests: list[Obj]) -> dict[str, str]:
        links: dict[str, str] = {}
        for obj in manifests:
            spec = obj.get("spec") or {}
            host, path = None, "/"
            if obj["kind"] == "Ingress":
                rules = [r for r in spec.get("rules") or [] if r.get("host")]
                if rules:
                    host = rules[0]["host"]
                    paths = (rules[0].get("http") or {}).get("paths") or []
                    path = (paths[0].get("path") if paths else None) or "/"
            elif obj["kind"] == "HTTPRoute" and spec.get("hostnames"):
                host = spec["hostnames"][0]
            if host:
                label = component_of(obj, self.cfg) or obj["metadata"]["name"]
                links.setdefault(label, f"{self.cfg.link_scheme}://{host}{path}")
        return links

    # ------------------------------------------------------------------ wait

    async def _wait(self, api: k8s.Kube, ctx: PhaseContext, target: str,
                    components: list[str]) -> None:
        ready = Readiness(components, ctx.emit)
        await ctx.emit(ready.line())
        limit = self.cfg.rollout_timeout.total_seconds()
        deadline = time.monotonic() + limit
        while True:
            listed = await asyncio.gather(*(api.list_objects(k, target) for k in WORKLOADS))
            mine = [o for objects in listed for o in objects if _ours(o, ctx)]
            state: dict[str, list[Obj]] = {}
            for obj in mine:
                state.setdefault(component_of(obj, self.cfg) or obj["metadata"]["name"],
                                 []).append(obj)
            up = {c for c, objs in state.items() if all(_rolled_out(o) for o in objs)}
            await ready.all_of(up)
            if not ready.waiting:
                return
            pending = {c: state.get(c, []) for c in ready.waiting}
            failures = await self._diagnose(api, target, pending,
                                            final=time.monotonic() >= deadline)
            if failures:
                raise combine(failures)
            await asyncio.sleep(self.cfg.poll.total_seconds())

    async def _diagnose(self, api: k8s.Kube, target: str, pending: Mapping[str, list[Obj]],
                        *, final: bool) -> list[ComponentFailed]:
        """Why components are not ready: the fatal reasons at once, everything at the end."""
        pods = await api.list_objects(k8s.POD, target)
        events: list[Obj] | None = None
        failures: list[ComponentFailed] = []
        for component, objs in sorted(pending.items()):
            found: ComponentFailed | None = None
            for obj in objs:
                if _stalled(obj):
                    found = ComponentFailed(component, f"{obj['kind']} {obj['metadata']['name']}"
                                            " did not progress: its progress deadline passed")
                for pod in (p for p in pods if _selects(obj, p)):
                    found = found or await self._pod_failure(api, target, component, pod)
                    if found is None and final:
                        if events is None:
                            events = await api.list_objects(k8s.EVENT, target)
                        found = _unschedulable(component, pod, events)
            if found is None and final:
                found = ComponentFailed(component, "not available within "
                                        f"{self.cfg.rollout_timeout.total_seconds():g}s")
            if found is not None:
                failures.append(found)
        return failures

    async def _pod_failure(self, api: k8s.Kube, target: str, component: str,
                           pod: Obj) -> ComponentFailed | None:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for status in statuses:
            waiting = (status.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason not in _FATAL:
                continue
            message = " ".join(str(waiting.get("message") or "").split())[:200]
            logs = ""
            if reason == "CrashLoopBackOff":
                logs = await api.log(target, pod["metadata"]["name"], container=status.get("name"),
                                     lines=LOG_LINES, previous=True)
                message = message or _last_exit(status)
            text = f"{reason}" + (f": {message}" if message else "")
            return ComponentFailed(component, f"pod {pod['metadata']['name']} {text}",
                                   logs=redaction.scrub(logs))
        return None

    # ------------------------------------------------------------------ remove

    async def remove(self, ctx: PhaseContext) -> None:
        namespace = (ctx.outputs.get(PhaseName.INFRA) or {}).get("namespace")
        if not namespace:
            return  # the infra phase never made one: nothing was deployed
        api = self.make_kube(self.cfg)
        try:
            listed = await asyncio.gather(*(api.list_objects(kind, namespace)
                                            for kind in (*COPIED, k8s.SECRET)))
            mine = [o for objects in listed for o in objects if _ours(o, ctx)]
            await asyncio.gather(*(api.delete(k8s.KINDS[o["kind"]], namespace,
                                              o["metadata"]["name"]) for o in mine))
        finally:
            await api.close()
        if mine:
            await ctx.emit(f"deleted {len(mine)} objects from {namespace}")


def _ours(obj: Obj, ctx: PhaseContext) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY) == "ephem" and labels.get(ENV_ID) == str(ctx.env_id))


def _strip_service(spec: Obj) -> None:
    """What the cluster assigned to the source Service, not to be copied."""
    for key in ("clusterIP", "clusterIPs", "healthCheckNodePort", "loadBalancerIP",
                "externalIPs"):
        spec.pop(key, None)
    for port in spec.get("ports") or []:
        port.pop("nodePort", None)


def _rolled_out(obj: Obj) -> bool:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    want = int(spec.get("replicas", 1))
    generation = (obj.get("metadata") or {}).get("generation")
    if generation is not None and int(status.get("observedGeneration", 0)) < int(generation):
        return False
    if obj["kind"] == "StatefulSet":
        revisions = (status.get("currentRevision"), status.get("updateRevision"))
        return int(status.get("readyReplicas", 0)) >= want and (
            None in revisions or revisions[0] == revisions[1])
    return (int(status.get("updatedReplicas", 0)) >= want
            and int(status.get("availableReplicas", 0)) >= want)


def _stalled(obj: Obj) -> bool:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Progressing" and \
                condition.get("reason") == "ProgressDeadlineExceeded":
            return True
    return False


def _selects(workload: Obj, pod: Obj) -> bool:
    wanted = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def _last_exit(status: Obj) -> str:
    terminated = (status.get("lastState") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    return f"the last run exited with code {code}" if code is not None else ""


def _unschedulable(component: str, pod: Obj, events: list[Obj]) -> ComponentFailed | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            name = pod["metadata"]["name"]
            said = [e.get("message") for e in events
                    if (e.get("involvedObject") or {}).get("name") == name
                    and e.get("reason") == "FailedScheduling" and e.get("message")]
            message = said[-1] if said else condition.get("message") or "no reason given"
            return ComponentFailed(component, f"pod {name} cannot be scheduled: {message}")
    return None
