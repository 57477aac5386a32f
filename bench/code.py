"""Benchmark the code phase's Kubernetes side against the emulated API server of tests/kube.py.

Two questions, each answered with a baseline measured in the same run:

1. Resolving a `cluster` reference: how many API calls, per kind, for 5 and for 50 components?
   Goal: a constant number of list calls whatever the number of components (no per-object GET).
2. Deploying: 50 components against 5. Every workload's rollout takes `--rollout` seconds to
   finish (a controller in this script reports it done that long after the workload appeared),
   so waiting one after another would take ten times as long for ten times the components.
   Goal: 50 take under twice the time of 5, since the waits run at once.

The reference namespace is shaped like a real one: per component a Deployment (a few are
StatefulSets, a few have a nightly CronJob), a Service, a ConfigMap, and an Ingress for every
fifth. The machine may be busy with other work: compare the ratios, not the seconds.

    python bench/code.py [--rollout 1.0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import parse_blueprint
from bot.domain import DataMode, DataRequest, PhaseName, ReleaseSet
from pipelines.base import PhaseContext
from pipelines.code.kubernetes import KubernetesDeployer
from pipelines.code.sources import Resolver
from tests.kube import Cluster

SOURCE = "staging"
NAME = "app.kubernetes.io/name"


def reference(cluster: Cluster, components: int) -> dict[str, str]:
    """A staging namespace of `components` components; their versions."""
    cluster.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SOURCE}})
    versions = {}
    for i in range(components):
        name = f"svc{i:02}"
        version = f"1.{i}.{i % 7}"
        versions[name] = version
        kind = "StatefulSet" if i % 10 == 9 else "Deployment"
        pod = {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
            {"name": name, "image": f"ghcr.io/shop/{name}:{version}",
             "envFrom": [{"configMapRef": {"name": f"{name}-config"}}]}]}}
        cluster.put({"apiVersion": "apps/v1", "kind": kind,
                     "metadata": {"name": name, "namespace": SOURCE, "labels": {NAME: name}},
                     "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                              "template": pod}})
        if i % 8 == 3:
            cluster.put({"apiVersion": "batch/v1", "kind": "CronJob",
                         "metadata": {"name": f"{name}-nightly", "namespace": SOURCE,
                                      "labels": {NAME: name}},
                         "spec": {"schedule": "0 3 * * *",
                                  "jobTemplate": {"spec": {"template": pod}}}})
        cluster.put({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": name, "namespace": SOURCE, "labels": {NAME: name}},
                     "spec": {"selector": {"app": name}, "clusterIP": f"10.0.1.{i}",
                              "ports": [{"port": 80, "targetPort": 8080}]}})
        cluster.put({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": f"{name}-config", "namespace": SOURCE},
                     "data": {"LOG_LEVEL": "info", "FEATURE": str(i)}})
        if i % 5 == 0:
            cluster.put({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                         "metadata": {"name": name, "namespace": SOURCE,
                                      "labels": {NAME: name}},
                         "spec": {"rules": [{"host": f"{name}.staging.example.com"}]}})
    return versions


def calls_by_kind(cluster: Cluster, since: int) -> Counter[str]:
    """`GET list deployments`, `GET one deployments`, `PATCH …` → how many, from the server."""
    counted: Counter[str] = Counter()
    for method, path, _ in cluster.requests()[since:]:
        parts = path.split("?")[0].strip("/").split("/")
        if "namespaces" not in parts:
            continue
        rest = parts[parts.index("namespaces") + 2:]
        what = "list" if len(rest) == 1 else "one"
        counted[f"{method} {what} {rest[0]}"] += 1
    return counted


async def resolve(components: int) -> tuple[float, Counter[str], int]:
    with Cluster() as cluster:
        versions = reference(cluster, components)
        bp = parse_blueprint({"references": {"staging": {"source": {
            "kind": "cluster", "namespace": SOURCE, "kubeconfig": str(cluster.kubeconfig)}}}})
        since = len(cluster.requests())
        started = time.perf_counter()
        found = await Resolver(bp.references).resolve("staging")
        took = time.perf_counter() - started
        assert found.versions == versions, "the resolved set is not the reference's"
        return took, calls_by_kind(cluster, since), len(found.versions)


async def controller(cluster: Cluster, namespace: str, delay: float,
                     stop: asyncio.Event) -> None:
    """Each workload reports its rollout done `delay` seconds after it first appeared."""
    seen: dict[tuple[str, str], float] = {}
    done: set[tuple[str, str]] = set()
    while not stop.is_set():
        for kind in ("deployments", "statefulsets"):
            objects = await asyncio.to_thread(cluster.list, f"apps/v1/{kind}", namespace)
            for obj in objects:
                key = (kind, obj["metadata"]["name"])
                seen.setdefault(key, time.monotonic())
                if key not in done and time.monotonic() - seen[key] >= delay:
                    await asyncio.to_thread(cluster.roll_out, f"apps/v1/{kind}", namespace,
                                            key[1])
                    done.add(key)
        await asyncio.sleep(0.02)


async def deploy(components: int, *, rollout: float) -> tuple[float, Counter[str]]:
    target = f"ephem-bench-{components}"
    with Cluster() as cluster:
        versions = reference(cluster, components)
        cluster.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": target}})
        access = {"kubeconfig": str(cluster.kubeconfig)}
        bp = parse_blueprint({
            "references": {"staging": {"source": {"kind": "cluster", "namespace": SOURCE,
                                                  **access}}},
            "phases": {"code": {"kubernetes": {**access, "hosts": "{host}-{env}.example.com",
                                               "poll": 0.1}}}})
        assert bp.phases.code is not None and bp.phases.code.kubernetes is not None
        deployer = KubernetesDeployer(bp.phases.code.kubernetes, references=bp.references)

        async def emit(_: str) -> None:
            return None

        ctx = PhaseContext(env_id=1, name="bench", owner_id="U", emit=emit,
                           release_set=ReleaseSet(versions), data=DataRequest(DataMode.NONE),
                           blueprint=bp, reference="staging",
                           outputs={PhaseName.INFRA: {"namespace": target}})
        stop = asyncio.Event()
        rolling = asyncio.create_task(controller(cluster, target, rollout, stop))
        since = len(cluster.requests())
        started = time.perf_counter()
        deployed = await deployer.deploy(ctx, database_url="postgresql://u:p@db/x")
        took = time.perf_counter() - started
        stop.set()
        await rolling
        assert len(deployed) == components
        return took, calls_by_kind(cluster, since)


def table(rows: list[list[Any]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).rjust(w) if j else str(c).ljust(w)
                               for j, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollout", type=float, default=1.0,
                        help="seconds each workload's rollout takes (default 1.0)")
    parser.add_argument("--rounds", type=int, default=3, help="deploys per size (median)")
    args = parser.parse_args()

    print("== resolving a cluster reference (API calls counted at the server)")
    small, large = await resolve(5), await resolve(50)
    kinds = sorted(set(small[1]) | set(large[1]))
    rows: list[list[Any]] = [["call", "5 components", "50 components"]]
    rows += [[k, small[1][k], large[1][k]] for k in kinds]
    rows.append(["total calls", sum(small[1].values()), sum(large[1].values())])
    rows.append(["seconds", f"{small[0]:.3f}", f"{large[0]:.3f}"])
    print(table(rows))
    constant = small[1] == large[1] and not any(k.startswith("GET one") for k in large[1])
    print(f"list calls constant, no per-object GET: {'yes' if constant else 'NO'}")

    print(f"\n== deploying (each rollout takes {args.rollout:g}s; median of {args.rounds})")
    results: dict[int, list[float]] = {5: [], 50: []}
    calls: dict[int, Counter[str]] = {}
    for _ in range(args.rounds):
        for n in (5, 50):
            took, counted = await deploy(n, rollout=args.rollout)
            results[n].append(took)
            calls[n] = counted
    five, fifty = statistics.median(results[5]), statistics.median(results[50])
    rows = [["", "5 components", "50 components", "50 / 5"],
            ["seconds (median)", f"{five:.2f}", f"{fifty:.2f}", f"{fifty / five:.2f}x"]]
    for k in sorted(set(calls[5]) | set(calls[50])):
        rows.append([k, calls[5][k], calls[50][k], ""])
    print(table(rows))
    print(f"goal: 50 under 2x the time of 5 -> {'met' if fifty < 2 * five else 'NOT met'}")


if __name__ == "__main__":
    asyncio.run(main())
