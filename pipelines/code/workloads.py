"""What a Kubernetes workload says about the release it runs, and how to pin it to another.

Why shared: the `cluster` release source reads a reference namespace's versions with these
rules, and the `kubernetes` deployer copies that namespace's workloads pinned to a release set
with the very same rules — which workload is which component (a label, or the blueprint's
mapping) and which container holds its image. Were the two to disagree, a copy would pin the
wrong container. Pure functions on the API's JSON; no I/O.

Versions are kept as the image reference has them: a tag (`2.7.3`), a digest
(`sha256:…`), or both (`2.7.3@sha256:…`), so a digest is never lost on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.config import WorkloadMatch

Obj = Mapping[str, Any]
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "CronJob")


def component_of(obj: Obj, match: WorkloadMatch) -> str | None:
    """The component `obj` runs: the one the blueprint maps to its name (`api: api-server` or
    `api: Deployment/api-server`), else the value of its `match.label` label."""
    name = obj.get("metadata", {}).get("name", "")
    kind = obj.get("kind", "")
    for component, ref in match.components.items():
        ref_kind, _, ref_name = ref.rpartition("/")
        if ref_name == name and (not ref_kind or ref_kind == kind):
            return component
    labels = obj.get("metadata", {}).get("labels") or {}
    value = labels.get(match.label)
    return str(value) if value else None


def pod_spec(obj: Obj) -> Mapping[str, Any] | None:
    """The pod template's spec of a Deployment, StatefulSet or CronJob."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template") or {}
    found = template.get("spec")
    return found if isinstance(found, Mapping) else None


def main_container(spec: Mapping[str, Any], component: str, match: WorkloadMatch
                   ) -> Mapping[str, Any] | None:
    """The container holding the component's image: named `match.container`, else named like
    the component, else the first one."""
    containers = [c for c in spec.get("containers") or () if isinstance(c, Mapping)]
    for wanted in (match.container, component):
        for c in containers:
            if wanted is not None and c.get("name") == wanted:
                return c
    return containers[0] if containers else None


def split_image(image: str) -> tuple[str, str]:
    """`ghcr.io/shop/api:2.7.3` → (`ghcr.io/shop/api`, `2.7.3`); a digest is kept
    (`…/api@sha256:ab` → `sha256:ab`, `…/api:2.7.3@sha256:ab` → `2.7.3@sha256:ab`); no tag
    is `latest`, as the container runtime reads it."""
    repository, at, digest = image.partition("@")
    slash = repository.rfind("/")
    colon = repository.rfind(":")
    tag = ""
    if colon > slash:  # a colon after the last slash is a tag, not a registry's port
        repository, tag = repository[:colon], repository[colon + 1:]
    if at:
        return repository, f"{tag}@{digest}" if tag else digest
    return repository, tag or "latest"


def pin_image(repository: str, version: str) -> str:
    """The inverse of `split_image`: a repository at a version (tag, digest, or both)."""
    if version.startswith("sha256:"):
        return f"{repository}@{version}"
    return f"{repository}:{version}"


def version_of(obj: Obj, component: str, match: WorkloadMatch) -> str | None:
    """The version `obj` runs of `component` (from its main container's image)."""
    spec = pod_spec(obj)
    container = main_container(spec, component, match) if spec is not None else None
    image = container.get("image") if container is not None else None
    return split_image(str(image))[1] if image else None
