"""A Kubernetes API server for tests: kmock's KubernetesEmulator over real HTTP, made faithful
enough for Ephem's infrastructure and code phases.

Why: the phases talk to Kubernetes through the official `kubernetes` client; the tests give that
client a real server to talk to, never a patched client. kmock 0.8's emulator keeps objects in
memory and serves them over HTTP, with the Kubernetes discovery of a K3s cluster's built-in
kinds. It gets two things wrong that matter here, both fixed in this fixture only:

- its path parser reads the cluster-scoped `/api/v1/namespaces[/NAME]` as a namespace *scope*
  (and fails outright on `/api/v1/namespaces`), not as the Namespace resource;
- a missing object can come back as 500 (an assertion inside the emulator) instead of 404.

What the fixture emulates, on top of kmock's storage and discovery:

- **create** (POST): 409 when the name is taken; namespaced objects need an existing namespace
  (404) that is not terminating (403), as a real server refuses; the server's metadata
  (`uid`, `resourceVersion`, `creationTimestamp`, `generation`, `metadata.namespace`); a
  Namespace gets `spec.finalizers: [kubernetes]` and `status.phase: Active`;
- **get, list** (per namespace, or across all of them), with `labelSelector` (`=`, `==`, `!=`,
  `in`, `notin`, `key`, `!key`) and `fieldSelector` (dotted paths, `=` and `!=`);
- **patch**: `application/apply-patch+yaml` (server-side apply) needs `fieldManager`, creates
  what is missing, removes the fields the same manager applied before and no longer applies,
  records `managedFields` (FieldsV1), and answers 409 when a field another manager set would
  change, unless `force=true`; `merge-patch+json` and `strategic-merge-patch+json` are both a
  JSON merge patch (RFC 7386: lists are replaced, never merged by key); `json-patch+json`
  (RFC 6902: add, remove, replace, test). Writes to an object never change its `status`, and
  writes to `/status` change only `status`, as with a status subresource. A change outside
  `metadata`/`status` bumps `metadata.generation`;
- **replace** (PUT), including a Namespace's `/finalize`;
- **delete**: objects with finalizers get a `deletionTimestamp` and stay until their finalizers
  are removed. A Namespace becomes `Terminating`; a namespace controller (a background task of
  the server) then deletes its content, sets the `NamespaceContentRemaining` and
  `NamespaceFinalizersRemaining` conditions a real cluster sets while something holds it,
  drops its `kubernetes` finalizer once it is empty, and removes it when no finalizer is left;
- **rollouts**: nothing runs pods. `Cluster.roll_out` sets a Deployment's, StatefulSet's or
  DaemonSet's status as its controller would once every replica is up (and
  `Cluster.stall_rollout` as it would when the progress deadline passes); with
  `Cluster(rollout="auto")` the controller task does that a moment after every change;
- **watch** is kmock's own (label selectors are not applied to watch streams).

The emulator is served by aiohttp's low-level server on 127.0.0.1 (a free port), in a thread of
its own with its own event loop, so blocking `kubernetes` client calls work from anywhere (a
test's event loop, `asyncio.to_thread`, another process through `Cluster.kubeconfig`). The
inspection and controller helpers of `Cluster` are plain blocking calls that run inside the
server's loop.

Use the fixture by importing `kube_fixture` into a test module (it registers as `kube`) and
asking for a `kube` argument; or `with Cluster() as cluster:` anywhere.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import gzip
import itertools
import json
import re
import socket
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp.web
import kmock
import pytest
import yaml
from kmock._internal import enums, parsing, rendering
from kubernetes import client

T = TypeVar("T")
Obj = dict[str, Any]

APPLY = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
NAMESPACES = kmock.resource("", "v1", "namespaces")
WORKLOADS = ("deployments", "statefulsets", "daemonsets")
_CONTROLLER_TICK = 0.05
_SERVER_SET = frozenset({"name", "namespace", "uid", "resourceVersion", "creationTimestamp",
                         "generation", "deletionTimestamp", "managedFields"})
_NS_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?/?$")


class ApiError(Exception):
    """A Kubernetes `Status` failure answer."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def response(self) -> aiohttp.web.Response:
        return aiohttp.web.json_response(
            {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
             "code": self.code, "reason": self.reason, "message": self.message},
            status=self.code)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- selectors


_SET_TERM = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        current += ch
    terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def label_matcher(selector: str | None) -> Callable[[Mapping[str, str]], bool]:
    """A predicate over an object's labels for a Kubernetes label selector."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for term in _split_selector(selector or ""):
        if m := _SET_TERM.match(term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                checks.append(lambda ls, k=key, vs=values: ls.get(k) in vs)
            else:
                checks.append(lambda ls, k=key, vs=values: ls.get(k) not in vs)
        elif "!=" in term:
            key, value = (p.strip() for p in term.split("!=", 1))
            checks.append(lambda ls, k=key, v=value: ls.get(k) != v)
        elif "=" in term:
            key, value = (p.strip() for p in term.replace("==", "=").split("=", 1))
            checks.append(lambda ls, k=key, v=value: ls.get(k) == v)
        elif term.startswith("!"):
            absent = term[1:].strip()
            checks.append(lambda ls, k=absent: k not in ls)
        else:
            checks.append(lambda ls, k=term: k in ls)
    return lambda labels: all(check(labels) for check in checks)


def _dig(obj: Mapping[str, Any], dotted: str) -> Any:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def field_matcher(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split_selector(selector or ""):
        negate = "!=" in term
        path, value = (p.strip() for p in term.replace("!=", "=").replace("==", "=").split("=", 1))
        checks.append(lambda o, p=path, v=value, n=negate: (str(_dig(o, p) or "") == v) != n)
    return lambda obj: all(check(obj) for check in checks)


# --------------------------------------------------------------------------- patches and fields


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, `null` removes, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(target: Obj, operations: list[Mapping[str, Any]]) -> Obj:
    """RFC 6902 with the operations clients use: add, remove, replace, test."""
    doc = copy.deepcopy(target)
    for op in operations:
        *parents, last = _pointer(str(op.get("path", "")))
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        kind = op.get("op")
        try:
            if kind == "test":
                current = node[int(last)] if isinstance(node, list) else node[last]
                if current != op.get("value"):
                    raise ApiError(422, "Invalid", f"test failed at {op.get('path')}")
            elif kind == "remove":
                del node[int(last) if isinstance(node, list) else last]
            elif kind in ("add", "replace"):
                value = copy.deepcopy(op.get("value"))
                if isinstance(node, list):
                    if last == "-":
                        node.append(value)
                    elif kind == "add":
                        node.insert(int(last), value)
                    else:
                        node[int(last)] = value
                else:
                    if kind == "replace" and last not in node:
                        raise ApiError(422, "Invalid", f"no value at {op.get('path')}")
                    node[last] = value
            else:
                raise ApiError(400, "BadRequest", f"unsupported json-patch op {kind!r}")
        except (KeyError, IndexError, ValueError) as exc:
            raise ApiError(422, "Invalid", f"json-patch {kind} {op.get('path')}: {exc}") from None
    return doc


Path_ = tuple[str, ...]


def leaf_paths(value: Any, prefix: Path_ = ()) -> set[Path_]:
    """The fields a configuration sets: paths to scalars, lists (atomic) and empty objects."""
    if isinstance(value, Mapping) and value:
        found: set[Path_] = set()
        for key, sub in value.items():
            found |= leaf_paths(sub, (*prefix, str(key)))
        return found
    return {prefix} if prefix else set()


def to_fields_v1(paths: set[Path_]) -> Obj:
    tree: Obj = {}
    for path in paths:
        node = tree
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return tree


def from_fields_v1(tree: Mapping[str, Any], prefix: Path_ = ()) -> set[Path_]:
    found: set[Path_] = set()
    for key, sub in tree.items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        found |= from_fields_v1(sub, path) if sub else {path}
    return found


def _get_path(obj: Any, path: Path_) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(obj, Mapping) or part not in obj:
            return False, None
        obj = obj[part]
    return True, obj


def _remove_path(obj: Obj, path: Path_) -> None:
    """Remove a field, and the objects it leaves empty (below the top level)."""
    trail: list[tuple[Obj, str]] = []
    node: Any = obj
    for part in path[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        trail.append((node, part))
        node = node[part]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    for parent, key in reversed(trail[1:]):
        if parent[key] == {}:
            del parent[key]


# --------------------------------------------------------------------------- the emulator


class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with its two bugs fixed and the verbs above implemented."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock's `load_bundled()` reads them with a deprecated importlib call.
        bundled = resources.files("kmock._internal").joinpath("resources.json.gz")
        self.resources.load_data(gzip.decompress(bundled.read_bytes()))
        self.rollout: Literal["auto", "manual"] = "manual"
        self.versions = itertools.count(1)
        self.failures: list[tuple[str, re.Pattern[str], int]] = []
        self.controller: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ requests in

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        await raw.read()
        try:
            request = await self._parse(raw)
            self._requests.append(request)
            for i, (method, pattern, status) in enumerate(self.failures):
                if method == raw.method and pattern.search(raw.path):
                    del self.failures[i]
                    raise ApiError(status, "InternalError" if status >= 500 else "Injected",
                                   f"injected failure for {raw.method} {raw.path}")
            return await self._handle(request)
        except ApiError as exc:
            return exc.response()
        except Exception as exc:
            if self._errors:
                self._errors[-1].append(exc)
            return await self._render_error(exc)

    async def _parse(self, raw: aiohttp.web.BaseRequest) -> rendering.Request:
        """kmock's request parsing, with `/api/v1/namespaces[/NAME[/status|/finalize]]` read
        as the cluster-scoped Namespace resource (kmock reads it as a namespace scope)."""
        body = await raw.read()
        text = body.decode("utf-8", errors="replace")
        data: Any = None
        if body:
            try:
                data = json.loads(text)
            except ValueError:
                try:
                    data = yaml.safe_load(text)
                except yaml.YAMLError:
                    data = None
        method = enums.method(raw.method)
        query = dict(raw.query)
        found = _NS_PATH.match(raw.path)
        if found:
            k8s = parsing.ParsedPath(group="", version="v1", plural="namespaces",
                                     name=found.group("name"), subresource=found.group("sub"))
        else:
            k8s = parsing.parse_path(raw.path)
        resource = None if k8s.group is None else kmock.resource(
            group=k8s.group, version=k8s.version, plural=k8s.plural)
        return rendering.Request(
            id=len(self._requests), raw_request=raw, url=raw.url, method=raw.method,
            params=query, headers=dict(raw.headers), cookies=dict(raw.cookies),
            data=data, body=body, text=text, action=parsing.guess_k8s(k8s, method, query),
            resource=resource, namespace=k8s.namespace, name=k8s.name,
            subresource=k8s.subresource)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if (resource is None or resource.plural is None or request.action is kmock.action.WATCH
                or request.subresource not in (None, "status", "finalize")):
            return await super()._handle(request)  # discovery, watch, anything else: kmock's
        self._known(resource)
        method = request.method.value.upper()
        async with self._lock:
            if method == "GET" and request.name is None:
                answer = self._list(request)
            elif method == "GET":
                answer = self._fetch(request)
            elif method == "POST" and request.name is None:
                answer = await self._create(resource, request.namespace, request.data,
                                            manager=request.params.get("fieldManager"))
            elif method == "PATCH" and request.name is not None:
                answer = await self._patch(request)
            elif method == "PUT" and request.name is not None:
                answer = await self._replace(request)
            elif method == "DELETE" and request.name is not None:
                answer = await self._delete(resource, request.namespace, request.name)
            elif method == "DELETE":
                answer = await self._delete_collection(request)
            else:
                raise ApiError(405, "MethodNotAllowed", f"{method} {request.url.path}")
        return aiohttp.web.json_response(answer, status=201 if method == "POST" else 200)

    # ------------------------------------------------------------------ resources

    def _known(self, resource: kmock.resource) -> kmock.ResourceInfo:
        if resource not in self.resources:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                                            f"({resource.plural})")
        return self.resources[resource]

    def _namespaced(self, resource: kmock.resource) -> bool:
        return bool(self._known(resource).namespaced)

    def _kind(self, resource: kmock.resource) -> str:
        return self._known(resource).kind or resource.plural.capitalize()

    def resource_of(self, api_version: str, kind: str) -> kmock.resource:
        group, _, version = api_version.rpartition("/")
        for res in self.resources:
            if res.group == group and res.version == version and self.resources[res].kind == kind:
                return res
        raise KeyError(f"no resource for {api_version} {kind}")

    @staticmethod
    def _has_status(resource: kmock.resource) -> bool:
        return resource.plural not in ("configmaps", "secrets", "serviceaccounts", "limitranges",
                                       "networkpolicies", "roles", "rolebindings", "events")

    # ------------------------------------------------------------------ storage

    def live(self, resource: kmock.resource, namespace: str | None, name: str) -> Obj | None:
        key = (resource, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    def _iter_live(self, resource: kmock.resource | None = None,
                   namespace: str | None = None) -> Iterator[tuple[kmock.resource, Obj]]:
        for (res, ns, _name), obj in list(self._objects.items()):
            if obj.deleted or (resource is not None and res != resource):
                continue
            if namespace is not None and ns != namespace:
                continue
            yield res, copy.deepcopy(obj.raw)

    async def _store(self, resource: kmock.resource, obj: Obj, *, event: str) -> Obj:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(next(self.versions))
        key = (resource, meta.get("namespace"), meta["name"])
        if key not in self._objects:
            self._objects[key] = copy.deepcopy(obj)
        else:
            self._objects[key].history.append(copy.deepcopy(obj))
        await self._buses[resource].put({"type": event, "object": copy.deepcopy(obj)})
        return obj

    async def _remove(self, resource: kmock.resource, obj: Obj) -> None:
        meta = obj["metadata"]
        key = (resource, meta.get("namespace"), meta["name"])
        self._objects[key].delete()
        await self._buses[resource].put({"type": "DELETED", "object": copy.deepcopy(obj)})

    def _require(self, resource: kmock.resource, namespace: str | None, name: str) -> Obj:
        obj = self.live(resource, namespace if self._namespaced(resource) else None, name)
        if obj is None:
            raise ApiError(404, "NotFound",
                           f'{resource.plural} "{name}" not found')
        return obj

    # ------------------------------------------------------------------ verbs

    def _list(self, request: rendering.Request) -> Obj:
        resource = request.resource
        assert resource is not None
        labels = label_matcher(request.params.get("labelSelector"))
        fields = field_matcher(request.params.get("fieldSelector"))
        namespace = request.namespace if self._namespaced(resource) else None
        items = [obj for _, obj in self._iter_live(resource, namespace)
                 if labels(obj["metadata"].get("labels") or {}) and fields(obj)]
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        api_version = f"{resource.group}/{resource.version}".lstrip("/")
        return {"apiVersion": api_version, "kind": f"{self._kind(resource)}List",
                "metadata": {"resourceVersion": str(next(self.versions))}, "items": items}

    def _fetch(self, request: rendering.Request) -> Obj:
        assert request.resource is not None and request.name is not None
        return self._require(request.resource, request.namespace, request.name)

    async def _check_namespace(self, resource: kmock.resource, namespace: str | None) -> None:
        if not self._namespaced(resource):
            return
        if not namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object is not set")
        ns = self.live(NAMESPACES, None, namespace)
        if ns is None:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden",
                           f"unable to create new content in namespace {namespace} because it "
                           "is being terminated")

    async def _create(self, resource: kmock.resource, namespace: str | None, body: Any, *,
                      manager: str | None, applied: Obj | None = None) -> Obj:
        if not isinstance(body, Mapping):
            raise ApiError(400, "BadRequest", "the body of the request is not an object")
        obj: Obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or (meta.get("generateName", "") + uuid.uuid4().hex[:5]
                                    if meta.get("generateName") else None)
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        namespaced = self._namespaced(resource)
        namespace = (namespace or meta.get("namespace")) if namespaced else None
        if namespaced and meta.get("namespace") not in (None, namespace):
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the "
                                              "namespace on the request")
        await self._check_namespace(resource, namespace)
        if self.live(resource, namespace, name) is not None:
            raise ApiError(409, "AlreadyExists", f'{resource.plural} "{name}" already exists')
        api_version = f"{resource.group}/{resource.version}".lstrip("/")
        obj.update(apiVersion=api_version, kind=self._kind(resource))
        meta.update(name=name, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop("deletionTimestamp", None)
        if namespaced:
            meta["namespace"] = namespace
        if self._has_status(resource):
            obj["status"] = {}
        if resource == NAMESPACES:
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        self._own(obj, manager=manager or "unknown", applied=applied,
                  operation="Apply" if applied is not None else "Update", api=api_version)
        return await self._store(resource, obj, event="ADDED")

    @staticmethod
    def _own(obj: Obj, *, manager: str, applied: Obj | None, operation: str, api: str,
             changed: set[Path_] | None = None) -> None:
        """Record which fields `manager` set, in `metadata.managedFields` (FieldsV1)."""
        meta = obj["metadata"]
        entries = [e for e in meta.get("managedFields") or []
                   if not (e.get("manager") == manager and e.get("operation") == operation)]
        previous = next((from_fields_v1(e.get("fieldsV1") or {})
                         for e in meta.get("managedFields") or []
                         if e.get("manager") == manager and e.get("operation") == operation),
                        set())
        if applied is not None:
            fields = leaf_paths(applied)
        else:
            fields = previous | (changed if changed is not None else leaf_paths(obj))
        fields = {p for p in fields if p[:1] not in (("status",), ("apiVersion",), ("kind",))
                  and not (p[:1] == ("metadata",) and p[1:2] and p[1] in _SERVER_SET)}
        if operation != "Apply":  # what another manager sets now is no longer ours
            for other in entries:
                owned = from_fields_v1(other.get("fieldsV1") or {})
                if owned & fields:
                    other["fieldsV1"] = to_fields_v1(owned - fields)
        if fields:
            entries.append({"manager": manager, "operation": operation, "apiVersion": api,
                            "time": _now(), "fieldsType": "FieldsV1",
                            "fieldsV1": to_fields_v1(fields)})
        meta["managedFields"] = entries

    async def _patch(self, request: rendering.Request) -> Obj:
        resource, name = request.resource, request.name
        assert resource is not None and name is not None
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        manager = request.params.get("fieldManager")
        namespace = request.namespace if self._namespaced(resource) else None
        if ctype == APPLY:
            return await self._apply(resource, namespace, name, request.data, manager=manager,
                                     force=request.params.get("force") == "true",
                                     status=request.subresource == "status")
        current = self._require(resource, namespace, name)
        if ctype == JSON_PATCH:
            if not isinstance(request.data, list):
                raise ApiError(400, "BadRequest", "a json patch is a list of operations")
            wanted = json_patch(current, request.data)
            changed = {p for p in leaf_paths(wanted)
                       if _get_path(current, p) != _get_path(wanted, p)}
        else:  # merge-patch+json and strategic-merge-patch+json: both merged as RFC 7386
            if not isinstance(request.data, Mapping):
                raise ApiError(400, "BadRequest", "a merge patch is an object")
            wanted = merge_patch(current, request.data)
            changed = leaf_paths(request.data)
        return await self._write(resource, current, wanted, manager=manager or "unknown",
                                 status=request.subresource == "status", changed=changed)

    async def _apply(self, resource: kmock.resource, namespace: str | None, name: str,
                     body: Any, *, manager: str | None, force: bool, status: bool) -> Obj:
        if not manager:
            raise ApiError(422, "Invalid", "PatchOptions.meta.k8s.io is invalid: fieldManager: "
                                           "Required value: is required for apply patch")
        if not isinstance(body, Mapping) or not body.get("apiVersion") or not body.get("kind"):
            raise ApiError(400, "BadRequest", "an applied configuration needs apiVersion and kind")
        applied: Obj = copy.deepcopy(dict(body))
        applied.setdefault("metadata", {})["name"] = name
        current = self.live(resource, namespace, name)
        if current is None:
            if status:
                raise ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
            return await self._create(resource, namespace, applied, manager=manager,
                                      applied=applied)
        fields = leaf_paths(applied)
        entries = current["metadata"].get("managedFields") or []
        if not force:
            for entry in entries:
                if entry.get("manager") == manager:
                    continue
                for path in from_fields_v1(entry.get("fieldsV1") or {}) & fields:
                    _, mine = _get_path(applied, path)
                    _, theirs = _get_path(current, path)
                    if mine != theirs:
                        raise ApiError(409, "Conflict",
                                       f'Apply failed with 1 conflict: conflict with '
                                       f'"{entry.get("manager")}": .{".".join(path)}')
        previous = next((from_fields_v1(e.get("fieldsV1") or {}) for e in entries
                         if e.get("manager") == manager and e.get("operation") == "Apply"), set())
        wanted = copy.deepcopy(current)
        for path in previous - fields:
            _remove_path(wanted, path)
        for path in fields:
            _, value = _get_path(applied, path)
            node = wanted
            for part in path[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            node[path[-1]] = copy.deepcopy(value)
        if force:  # the fields taken over are no longer the other managers'
            for entry in entries:
                if entry.get("manager") != manager:
                    owned = from_fields_v1(entry.get("fieldsV1") or {})
                    entry["fieldsV1"] = to_fields_v1(owned - fields)
            wanted["metadata"]["managedFields"] = entries
        return await self._write(resource, current, wanted, manager=manager, status=status,
                                 applied=applied)

    async def _write(self, resource: kmock.resource, current: Obj, wanted: Obj, *, manager: str,
                     status: bool, changed: set[Path_] | None = None,
                     applied: Obj | None = None) -> Obj:
        """Store `wanted` as the new version of `current`, as a real server would."""
        meta, old_meta = wanted.setdefault("metadata", {}), current["metadata"]
        for fixed in ("name", "namespace", "uid", "creationTimestamp", "generation",
                      "deletionTimestamp"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
            else:
                meta.pop(fixed, None)
        wanted["apiVersion"], wanted["kind"] = current.get("apiVersion"), current.get("kind")
        if status:  # the status subresource changes the status only
            wanted = {**copy.deepcopy(current), "status": wanted.get("status", {})}
            meta = wanted["metadata"]
        elif self._has_status(resource) and resource != NAMESPACES:
            wanted.pop("status", None)
            if "status" in current:
                wanted["status"] = copy.deepcopy(current["status"])
        if resource == NAMESPACES and not status:
            wanted["spec"] = copy.deepcopy(current.get("spec", {}))
            wanted["status"] = copy.deepcopy(current.get("status", {}))

        def body(o: Obj) -> Obj:
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        if body(wanted) != body(current):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        self._own(wanted, manager=manager, applied=applied,
                  operation="Apply" if applied is not None else "Update",
                  api=str(wanted["apiVersion"]), changed=changed)
        stored = await self._store(resource, wanted, event="MODIFIED")
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and \
                not (wanted.get("spec") or {}).get("finalizers"):
            await self._remove(resource, stored)
        return stored

    async def _replace(self, request: rendering.Request) -> Obj:
        resource, name = request.resource, request.name
        assert resource is not None and name is not None
        namespace = request.namespace if self._namespaced(resource) else None
        current = self._require(resource, namespace, name)
        if not isinstance(request.data, Mapping):
            raise ApiError(400, "BadRequest", "the body of the request is not an object")
        wanted = copy.deepcopy(dict(request.data))
        sent_version = (wanted.get("metadata") or {}).get("resourceVersion")
        if sent_version and sent_version != current["metadata"].get("resourceVersion"):
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource.plural} '
                                            f'"{name}": the object has been modified')
        if resource == NAMESPACES and request.subresource == "finalize":
            merged = copy.deepcopy(current)
            merged["spec"] = copy.deepcopy(wanted.get("spec") or {})
            stored = await self._store(resource, merged, event="MODIFIED")
            return stored
        wanted.setdefault("metadata", {}).setdefault(
            "managedFields", current["metadata"].get("managedFields"))
        return await self._write(resource, current, wanted,
                                 manager=request.params.get("fieldManager") or "unknown",
                                 status=request.subresource == "status")

    async def _delete(self, resource: kmock.resource, namespace: str | None, name: str) -> Obj:
        obj = self._require(resource, namespace, name)
        meta = obj["metadata"]
        if resource == NAMESPACES:
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                obj["status"] = {"phase": "Terminating"}
                await self._store(resource, obj, event="MODIFIED")
            return obj
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                await self._store(resource, obj, event="MODIFIED")
            return obj
        await self._remove(resource, obj)
        return obj

    async def _delete_collection(self, request: rendering.Request) -> Obj:
        resource = request.resource
        assert resource is not None
        listed = self._list(request)
        for obj in listed["items"]:
            meta = obj["metadata"]
            await self._delete(resource, meta.get("namespace"), meta["name"])
        return {**listed, "items": listed["items"]}

    # ------------------------------------------------------------------ controllers

    async def run_controllers(self) -> None:
        """The namespace controller and, with `rollout="auto"`, the workload controllers."""
        while True:
            await asyncio.sleep(_CONTROLLER_TICK)
            async with self._lock:
                try:
                    await self._finalize_namespaces()
                    if self.rollout == "auto":
                        await self._roll_out_all()
                except Exception as exc:  # a test should see it, not a dead controller
                    if self._errors:
                        self._errors[-1].append(exc)

    async def _finalize_namespaces(self) -> None:
        for _, ns in list(self._iter_live(NAMESPACES)):
            if not ns["metadata"].get("deletionTimestamp"):
                continue
            name = ns["metadata"]["name"]
            remaining: dict[str, int] = {}
            held: dict[str, int] = {}
            for res, obj in list(self._iter_live(namespace=name)):
                if not self._namespaced(res):
                    continue
                await self._delete(res, name, obj["metadata"]["name"])
                still = self.live(res, name, obj["metadata"]["name"])
                if still is not None:
                    label = f"{res.plural}.{res.group}"
                    remaining[label] = remaining.get(label, 0) + 1
                    for finalizer in still["metadata"].get("finalizers") or []:
                        held[finalizer] = held.get(finalizer, 0) + 1
            conditions = []
            if remaining:
                conditions.append({
                    "type": "NamespaceContentRemaining", "status": "True",
                    "reason": "SomeResourcesRemain",
                    "message": "Some resources are remaining: " + ", ".join(
                        f"{k} has {v} resource instances" for k, v in sorted(remaining.items()))})
            if held:
                conditions.append({
                    "type": "NamespaceFinalizersRemaining", "status": "True",
                    "reason": "SomeFinalizersRemain",
                    "message": "Some content in the namespace has finalizers remaining: "
                    + ", ".join(f"{k} in {v} resource instances" for k, v in sorted(held.items()))})
            spec_finalizers = list((ns.get("spec") or {}).get("finalizers") or [])
            if not remaining and "kubernetes" in spec_finalizers:
                spec_finalizers.remove("kubernetes")
            new = copy.deepcopy(ns)
            new["spec"] = {"finalizers": spec_finalizers} if spec_finalizers else {}
            new["status"] = {"phase": "Terminating", "conditions": conditions}
            if not spec_finalizers and not ns["metadata"].get("finalizers"):
                await self._remove(NAMESPACES, ns)
            elif new != ns:
                await self._store(NAMESPACES, new, event="MODIFIED")

    async def _roll_out_all(self) -> None:
        for res, obj in list(self._iter_live()):
            if res.group == "apps" and res.plural in WORKLOADS:
                status = rollout_status(res.plural, obj, ready=True)
                if (obj.get("status") or {}) != status:
                    await self.set_status(res, obj["metadata"]["namespace"],
                                          obj["metadata"]["name"], status)

    async def set_status(self, resource: kmock.resource, namespace: str | None, name: str,
                         status: Obj) -> Obj:
        obj = self._require(resource, namespace, name)
        obj["status"] = copy.deepcopy(status)
        return await self._store(resource, obj, event="MODIFIED")


def rollout_status(plural: str, obj: Mapping[str, Any], *, ready: bool) -> Obj:
    """The status a workload's controller reports once it has rolled out (or given up)."""
    spec = obj.get("spec") or {}
    want = int(spec.get("replicas", 1))
    generation = int(obj["metadata"].get("generation", 1))
    if plural == "daemonsets":
        return {"observedGeneration": generation, "desiredNumberScheduled": want,
                "currentNumberScheduled": want, "updatedNumberScheduled": want,
                "numberReady": want if ready else 0, "numberAvailable": want if ready else 0}
    up = want if ready else 0
    status: Obj = {"observedGeneration": generation, "replicas": want, "updatedReplicas": want,
                   "readyReplicas": up, "availableReplicas": up}
    if plural == "statefulsets":
        revision = f"{obj['metadata']['name']}-{generation}"
        status.update(currentReplicas=want, currentRevision=revision, updateRevision=revision)
        return status
    status["conditions"] = [
        {"type": "Available", "status": "True" if ready else "False",
         "reason": "MinimumReplicasAvailable" if ready else "MinimumReplicasUnavailable"},
        {"type": "Progressing", "status": "True" if ready else "False",
         "reason": "NewReplicaSetAvailable" if ready else "ProgressDeadlineExceeded",
         "message": f'ReplicaSet "{obj["metadata"]["name"]}" has '
                    + ("successfully progressed." if ready else "timed out progressing.")},
    ]
    return status


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """The emulator on 127.0.0.1 (a free port) in its own thread, and what tests do with it."""

    context = "kmock"

    def __init__(self, *, rollout: Literal["auto", "manual"] = "manual") -> None:
        self._rollout = rollout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kmock",
                                        daemon=True)
        self._emulator: _Emulator | None = None
        self._runner: aiohttp.web.ServerRunner | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="kmock-")
        self.url = ""
        self.kubeconfig = Path(self._dir.name) / "kubeconfig"
        self._clients: list[client.ApiClient] = []

    # ------------------------------------------------------------------ life

    def start(self) -> Cluster:
        self._thread.start()
        self._call(self._start())
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": self.context,
            "clusters": [{"name": self.context, "cluster": {"server": self.url}}],
            "users": [{"name": self.context, "user": {"token": "kmock"}}],
            "contexts": [{"name": self.context,
                          "context": {"cluster": self.context, "user": self.context}}],
        }), encoding="utf-8")
        return self

    async def _start(self) -> None:
        # aiohttp's own low-level server, not `kmock.Server`: that one also swaps aiohttp's DNS
        # resolver process-wide, which nothing here needs.
        self._emulator = _Emulator()
        self._emulator.rollout = self._rollout
        await self._emulator.__aenter__()
        self._runner = aiohttp.web.ServerRunner(aiohttp.web.Server(self._emulator))
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await aiohttp.web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._emulator.controller = asyncio.create_task(self._emulator.run_controllers())

    def stop(self) -> None:
        for api in self._clients:
            api.close()
        if self._emulator is not None:
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        self._dir.cleanup()

    async def _stop(self) -> None:
        assert self._emulator is not None and self._runner is not None
        if self._emulator.controller is not None:
            self._emulator.controller.cancel()
        await self._runner.cleanup()
        await self._emulator.__aexit__(None, None, None)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Awaitable[T]) -> T:
        async def run() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    @property
    def emulator(self) -> _Emulator:
        assert self._emulator is not None, "the cluster is not started"
        return self._emulator

    # ------------------------------------------------------------------ clients

    def configuration(self) -> client.Configuration:
        return client.Configuration(host=self.url)

    def api_client(self) -> client.ApiClient:
        """A configured official client (closed when the cluster stops)."""
        api = client.ApiClient(self.configuration())
        self._clients.append(api)
        return api

    # ------------------------------------------------------------------ looking

    def _resource(self, resource: str | kmock.resource) -> kmock.resource:
        return resource if isinstance(resource, kmock.resource) else kmock.resource(resource)

    def get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        """An object as stored (`resource` like `v1/namespaces`, `apps/v1/deployments`)."""
        res = self._resource(resource)

        async def look() -> Obj | None:
            async with self.emulator._lock:
                return self.emulator.live(res, namespace, name)

        return self._call(look())

    def list(self, resource: str, namespace: str | None = None, *,
             labels: str | None = None) -> list[Obj]:
        res = self._resource(resource)
        match = label_matcher(labels)

        async def look() -> list[Obj]:
            async with self.emulator._lock:
                return [o for _, o in self.emulator._iter_live(res, namespace)
                        if match(o["metadata"].get("labels") or {})]

        return self._call(look())

    def kinds_in(self, namespace: str) -> dict[str, int]:
        """`plural.group` → how many live objects of it are in `namespace`."""
        async def look() -> dict[str, int]:
            async with self.emulator._lock:
                counts: dict[str, int] = {}
                for res, _ in self.emulator._iter_live(namespace=namespace):
                    label = f"{res.plural}.{res.group}"
                    counts[label] = counts.get(label, 0) + 1
                return counts

        return self._call(look())

    def requests(self, method: str | None = None) -> list[tuple[str, str, str]]:
        """(method, path with query, content type) of every request served so far."""
        seen = [(r.method.value.upper(), str(r.url.path_qs), r.headers.get("Content-Type", ""))
                for r in list(self.emulator._requests)]
        return [s for s in seen if method is None or s[0] == method.upper()]

    # ------------------------------------------------------------------ acting as others

    def put(self, obj: Mapping[str, Any], *, manager: str = "kubectl") -> Obj:
        """Create an object as someone else would (e.g. a stray namespace, a workload)."""
        meta = obj.get("metadata") or {}

        async def make() -> Obj:
            async with self.emulator._lock:
                res = self.emulator.resource_of(str(obj["apiVersion"]), str(obj["kind"]))
                return await self.emulator._create(res, meta.get("namespace"), obj,
                                                   manager=manager)

        return self._call(make())

    def patch(self, resource: str, namespace: str | None, name: str, patch: Mapping[str, Any],
              *, manager: str = "kubectl") -> Obj:
        """A merge patch as someone else would send it (e.g. adding a finalizer)."""
        res = self._resource(resource)

        async def change() -> Obj:
            async with self.emulator._lock:
                current = self.emulator._require(res, namespace, name)
                return await self.emulator._write(res, current, merge_patch(current, patch),
                                                  manager=manager, status=False,
                                                  changed=leaf_paths(patch))

        return self._call(change())

    def set_status(self, resource: str, namespace: str | None, name: str,
                   status: Mapping[str, Any]) -> Obj:
        """Set an object's status as its controller would."""
        res = self._resource(resource)

        async def change() -> Obj:
            async with self.emulator._lock:
                return await self.emulator.set_status(res, namespace, name, dict(status))

        return self._call(change())

    def roll_out(self, resource: str, namespace: str, name: str) -> Obj:
        """A Deployment/StatefulSet/DaemonSet reports every replica of its spec up to date."""
        res = self._resource(resource)
        obj = self.get(resource, namespace, name)
        if obj is None:
            raise KeyError(f"{resource} {namespace}/{name} does not exist")
        return self.set_status(resource, namespace, name,
                               rollout_status(str(res.plural), obj, ready=True))

    def stall_rollout(self, resource: str, namespace: str, name: str) -> Obj:
        """The workload's controller gives up: no replica ready, progress deadline exceeded."""
        res = self._resource(resource)
        obj = self.get(resource, namespace, name)
        if obj is None:
            raise KeyError(f"{resource} {namespace}/{name} does not exist")
        return self.set_status(resource, namespace, name,
                               rollout_status(str(res.plural), obj, ready=False))

    def fail(self, method: str, path: str, *, status: int = 500, times: int = 1) -> None:
        """The next `times` requests of `method` whose path matches the regex `path` fail."""
        for _ in range(times):
            self.emulator.failures.append((method.upper(), re.compile(path), status))

    @property
    def rollout(self) -> Literal["auto", "manual"]:
        return self.emulator.rollout

    @rollout.setter
    def rollout(self, mode: Literal["auto", "manual"]) -> None:
        self.emulator.rollout = mode


@pytest.fixture(name="kube")
def kube_fixture() -> Iterator[Cluster]:
    """A fresh emulated cluster per test (its state is the test's alone)."""
    with Cluster() as cluster:
        yield cluster
