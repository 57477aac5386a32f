"""Where a reference environment's release set comes from, and the resolver the Slack edge asks.

Why: `/ephem create --match staging` must start from what staging *runs*, and teams know that
in different places — a map in the blueprint (`static`), the cluster itself (`cluster`: the
images of a namespace's Deployments, StatefulSets and CronJobs), a release registry's CLI
(`command`: Reliza Hub's and ReARM's answer "what does instance X run" this way) or an HTTP
endpoint (`http`). Each is a `Source`: one method, and a `where` for messages. A new kind is
one more class and one more line in `source_for`, and touches nothing else.

The `Resolver` implements `bot.ports.ReleaseResolver`: the handlers call it once, when a
request is accepted, and record the answer on the environment. A source that fails, times out
or answers something that is not a release set is refused with a `UserError` naming the
reference, the source and what went wrong, so nothing is queued on a guess.

What a `command` prints and an `http` URL answers is JSON, either a map
(`{"api": "2.7.3", "web": "5.1.0"}`), or a list of `{"component": …, "version": …}` (`name`
for `component` works too), either of them also under a top-level `releases` or `components`.

Neighbours: `kube` (the API calls), `workloads` (which workload is which component, shared with
the `kubernetes` deployer), `bot.proc` (runs the command).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Protocol

import aiohttp

from bot import proc, redaction
from bot.config import (
    ClusterSource,
    CommandSource,
    HttpSource,
    KubeAccess,
    Reference,
    StaticSource,
)
from bot.domain import ReleaseSet, format_duration
from bot.errors import PermanentError, PhaseError, TemporaryError, UserError
from pipelines.code import kube as k8s
from pipelines.code.workloads import component_of, version_of

SourceConfig = StaticSource | ClusterSource | CommandSource | HttpSource
KubeFactory = Callable[[KubeAccess], k8s.Kube]
OUTPUT_LINES = 20_000  # lines of a command's output kept (a pretty-printed set of many components)


class Source(Protocol):
    """One way of reading a release set."""

    def where(self) -> str:
        """Where the set is read from, for messages (`cluster namespace staging`)."""
        ...

    async def releases(self) -> dict[str, str]:
        """Component → version, now. Raises PhaseError (Temporary or Permanent) with a short,
        channel-safe reason."""
        ...


class StaticReleases:
    def __init__(self, cfg: StaticSource) -> None:
        self.cfg = cfg

    def where(self) -> str:
        return "the blueprint"

    async def releases(self) -> dict[str, str]:
        return dict(self.cfg.releases)


class CommandReleases:
    """Runs the program (through `bot.proc`, environment scrubbed, process group killed on a
    timeout) and reads the JSON it prints. Lines it writes before the JSON — a CLI's notices on
    stderr, which `bot.proc` interleaves with stdout — are skipped."""

    def __init__(self, cfg: CommandSource) -> None:
        self.cfg = cfg

    def where(self) -> str:
        return f"command {self.cfg.command[0]}"

    async def releases(self) -> dict[str, str]:
        result = await proc.run(self.cfg.command, timeout=self.cfg.timeout.total_seconds(),
                                keep_lines=OUTPUT_LINES)
        if result.returncode != 0:
            tail = redaction.scrub(result.tail(5))
            raise PermanentError(f"it exited with code {result.returncode}"
                                 + (f": {tail}" if tail else " and printed nothing"))
        return parse_releases(_json_document(list(result.output)))


class HttpReleases:
    def __init__(self, cfg: HttpSource) -> None:
        self.cfg = cfg
        if cfg.token is not None:
            redaction.register(cfg.token.get_secret_value())

    def where(self) -> str:
        return f"URL {redaction.scrub(self.cfg.url)}"

    async def releases(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.cfg.token is not None:
            headers["Authorization"] = f"Bearer {self.cfg.token.get_secret_value()}"
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout.total_seconds())
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.get(self.cfg.url, headers=headers) as response:
                body = await response.text(errors="replace")
                status = response.status
        except aiohttp.ClientError as exc:
            raise TemporaryError(f"it could not be reached ({type(exc).__name__})") from None
        if status != 200:
            raise PermanentError(f"it answered HTTP {status}"
                                 + (" (is the token right?)" if status in (401, 403) else ""))
        try:
            data = json.loads(body)
        except ValueError:
            raise PermanentError("it answered something that is not JSON") from None
        return parse_releases(data)


class ClusterReleases:
    """The images a namespace runs now: one list call per workload kind, no per-object GETs."""

    def __init__(self, cfg: ClusterSource, *, kube: KubeFactory = k8s.Kube) -> None:
        self.cfg = cfg
        self.make_kube = kube

    def where(self) -> str:
        return f"cluster namespace {self.cfg.namespace}"

    async def releases(self) -> dict[str, str]:
        api = self.make_kube(self.cfg)
        try:
            lists = await asyncio.gather(*(api.list_objects(kind, self.cfg.namespace)
                                           for kind in (k8s.DEPLOYMENT, k8s.STATEFULSET,
                                                        k8s.CRONJOB)))
        finally:
            await api.close()
        return releases_of([obj for items in lists for obj in items], self.cfg)


def releases_of(objects: list[dict[str, Any]], cfg: ClusterSource) -> dict[str, str]:
    """Component → version from a namespace's workloads; two workloads of one component running
    different versions are refused, naming both."""
    seen: dict[str, tuple[str, str]] = {}  # component → (version, "Deployment/api")
    for obj in objects:
        component = component_of(obj, cfg)
        if component is None:
            continue
        version = version_of(obj, component, cfg)
        if version is None:
            continue
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if component in seen and seen[component][0] != version:
            first_version, first = seen[component]
            raise PermanentError(f"component {component} runs two versions: {first} "
                                 f"{first_version} and {where} {version}")
        seen.setdefault(component, (version, where))
    if not seen:
        raise PermanentError(f"no workload there has the label {cfg.label} or is named in "
                             "`components`")
    return {component: version for component, (version, _) in sorted(seen.items())}


def source_for(cfg: SourceConfig, *, kube: KubeFactory = k8s.Kube) -> Source:
    match cfg:
        case StaticSource():
            return StaticReleases(cfg)
        case ClusterSource():
            return ClusterReleases(cfg, kube=kube)
        case CommandSource():
            return CommandReleases(cfg)
        case HttpSource():
            return HttpReleases(cfg)


class Resolver:
    """`bot.ports.ReleaseResolver` over the blueprint's references."""

    def __init__(self, references: Mapping[str, Reference], *,
                 kube: KubeFactory = k8s.Kube) -> None:
        self.references = dict(references)
        self.make_kube = kube

    async def resolve(self, reference: str) -> ReleaseSet:
        if reference not in self.references:
            known = ", ".join(f"`{r}`" for r in self.references) or "none are configured"
            raise UserError(f"There is no reference environment `{reference}` ({known}).")
        cfg = self.references[reference].release_source
        source = source_for(cfg, kube=self.make_kube)
        limit = getattr(cfg, "timeout", None)
        what = f"the release set of `{reference}` (from {source.where()})"
        try:
            async with asyncio.timeout(limit.total_seconds() if limit is not None else None):
                versions = await source.releases()
        except TimeoutError:
            assert limit is not None
            raise UserError(f"I could not read {what}: no answer within "
                            f"{_human(limit.total_seconds())}. Try again in a moment.") from None
        except PhaseError as exc:
            raise UserError(f"I could not read {what}: {exc.reason}.") from None
        return ReleaseSet(versions)


def parse_releases(data: Any) -> dict[str, str]:
    """A release set from decoded JSON (see the module docstring for the shapes); raises
    PermanentError saying what is wrong with it."""
    if isinstance(data, Mapping):
        for key in ("releases", "components"):
            if key in data and isinstance(data[key], Mapping | list):
                data = data[key]
                break
    pairs: list[tuple[Any, Any]]
    if isinstance(data, Mapping):
        pairs = list(data.items())
    elif isinstance(data, list):
        pairs = []
        for item in data:
            if not isinstance(item, Mapping):
                raise PermanentError("its answer is a list, but not of "
                                     '{"component": …, "version": …} objects')
            pairs.append((item.get("component", item.get("name")), item.get("version")))
    else:
        raise PermanentError("its answer is not a JSON object or list")
    found: dict[str, str] = {}
    for component, version in pairs:
        if not isinstance(component, str) or not component.strip():
            raise PermanentError(f"its answer names a component {component!r}, which is not "
                                 "a name")
        if not isinstance(version, str) or not version.strip():
            shown = "no version" if version in (None, "") else f"the version {version!r}, " \
                "which is not a string (quote it)"
            raise PermanentError(f"its answer gives component {component} {shown}")
        found[component.strip()] = version.strip()
    if not found:
        raise PermanentError("its answer names no component")
    return found


def _json_document(lines: list[str]) -> Any:
    """The JSON document at the end of a command's output."""
    for start, line in enumerate(lines):
        if line.lstrip().startswith(("{", "[")):
            try:
                return json.loads("\n".join(lines[start:]))
            except ValueError:
                continue
    if any(len(line) >= proc.MAX_LINE for line in lines):
        raise PermanentError(f"its output has a line longer than {proc.MAX_LINE} characters, "
                             "which is cut; print the JSON over several lines")
    raise PermanentError("it printed no JSON" if lines else "it printed nothing")


def _human(seconds: float) -> str:
    return f"{seconds:g}s" if seconds < 60 else format_duration(timedelta(seconds=seconds))
