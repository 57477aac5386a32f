"""The `local` deployer: each component of the release set a process on this machine.

Why: the demo, and a laptop without a cluster, still deserve the real flow — a release set
deployed, its components connected to the environment's own database, health-checked, linked in
the thread. Each component is the command the blueprint gives it, started with its version and
the data phase's connection (`DATABASE_URL` by default) in its environment, on a free port,
and ready when `GET <health>` answers 2xx.

These processes are the environment, not a step of a phase: they keep running when Ephem
restarts (`bot.detached` starts them in a session of their own). Each has a state file — pid,
process start time, port, version, command — next to its log under
`<EPHEM_STATE_DIR>/local/<env id>-<env name>/`; that is how a later apply adopts them (a
component still running at the same version and command is kept, its health checked again),
and how destroy and the orphan finder find them to stop. A component that exits while starting
is reported with its exit code and last log lines (the wrapper records the code even for a bot
that restarted since); one that never answers its health check is reported with the check's
last answer.

This deployer is for one machine: replicas of Ephem on several machines would each see only
their own processes.

Neighbours: `plan` (what to deploy, readiness, failures), `bot.detached` (the processes),
`phase.CodePhase` (the phase around it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from bot import detached, redaction
from bot.config import LocalComponent, LocalDeployerConfig
from bot.errors import PermanentError
from pipelines.base import PhaseContext
from pipelines.code.plan import (
    LOG_LINES,
    ComponentFailed,
    Deployed,
    Planned,
    Readiness,
    combine,
    plan_release,
)

log = logging.getLogger(__name__)

_ENV_DIR = re.compile(r"^(?P<id>\d+)-(?P<name>[a-z0-9-]+)$")
_POLL = 0.1
_CHECK_TIMEOUT = 2.0


@dataclass(frozen=True)
class Running:
    """A component's state file: enough to find its process again and to know whether it is
    still the one the release set asks for."""

    component: str
    pid: int  # also its process group
    ident: str | None  # the process's start time (pid reuse guard), where it can be read
    port: int
    version: str
    command: list[str]
    log_offset: int  # size of the log before this start: where its own lines begin
    started_at: float


@dataclass(frozen=True)
class LocalOrphan:
    """Processes of an environment the store no longer has as live."""

    env_id: int
    env_name: str
    directory: Path
    pids: tuple[int, ...]


class LocalDeployer:
    kind = "local"

    def __init__(self, cfg: LocalDeployerConfig, *, state_dir: Path,
                 python: str = sys.executable, stop_grace: float = 5.0) -> None:
        self.cfg = cfg
        self.root = state_dir / "local"
        self.python = python
        self.stop_grace = stop_grace

    def directory(self, ctx: PhaseContext) -> Path:
        return self.root / f"{ctx.env_id}-{ctx.name}"

    async def describe(self, ctx: PhaseContext) -> str:
        return f"as processes on this machine ({self.cfg.host})"

    # ------------------------------------------------------------------ deploy

    async def deploy(self, ctx: PhaseContext, *, database_url: str | None) -> list[Deployed]:
        plan = plan_release(ctx.release_set, self.cfg.components,
                            where="phases.code.local.components")
        directory = self.directory(ctx)
        directory.mkdir(parents=True, exist_ok=True)
        ready = Readiness(plan.names, ctx.emit)
        await ctx.emit(ready.line())
        results = await asyncio.gather(
            *(self._component(ctx, p, directory=directory, database_url=database_url,
                              ready=ready) for p in plan.components),
            return_exceptions=True)
        failures = [r for r in results if isinstance(r, ComponentFailed)]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, ComponentFailed):
                raise r
        if failures:
            raise combine(failures)
        return [r for r in results if isinstance(r, Deployed)]

    async def _component(self, ctx: PhaseContext, planned: Planned, *, directory: Path,
                         database_url: str | None, ready: Readiness) -> Deployed:
        name = planned.component
        spec = self.cfg.components[name]
        running = _read_state(directory, name)
        if running is not None and detached.alive(running.pid, running.ident):
            wanted = self._command(spec, planned, ctx=ctx, port=running.port)
            if running.version == planned.version and running.command == wanted:
                await self._healthy(running, spec, directory=directory)
                await ready.ready(name)
                return self._deployed(running, spec)
            await ctx.emit(f"{name}: replacing {running.version} with {planned.version}")
            await detached.stop(running.pid, grace=self.stop_grace)
        elif running is not None:
            code = detached.exit_status(_path(directory, name, "exit"))
            how = f"exited with code {code}" if code is not None else "is no longer running"
            await ctx.emit(f"{name} {how}; starting it again")
        running = self._start(ctx, planned, spec, directory=directory,
                              database_url=database_url)
        await self._healthy(running, spec, directory=directory)
        await ready.ready(name)
        return self._deployed(running, spec)

    def _start(self, ctx: PhaseContext, planned: Planned, spec: LocalComponent, *,
               directory: Path, database_url: str | None) -> Running:
        name = planned.component
        port = _free_port(self.cfg.host)
        command = self._command(spec, planned, ctx=ctx, port=port)
        env = {**spec.env, "PORT": str(port), "HOST": self.cfg.host,
               "VERSION": planned.version, "EPHEM_COMPONENT": name, "EPHEM_ENV": ctx.name}
        if database_url:
            env[self.cfg.database_env] = database_url
        logfile = _path(directory, name, "log")
        offset = logfile.stat().st_size if logfile.exists() else 0
        try:
            pid = detached.start(command, env=env, cwd=self.cfg.workdir, log=logfile,
                                 exit_file=_path(directory, name, "exit"))
        except PermanentError as exc:
            raise ComponentFailed(name, exc.reason) from None
        running = Running(component=name, pid=pid, ident=detached.identity(pid), port=port,
                          version=planned.version, command=command, log_offset=offset,
                          started_at=time.time())
        _write_state(directory, running)
        log.info("started %s of %s (pid %d, port %d)", name, ctx.name, pid, port)
        return running

    async def _healthy(self, running: Running, spec: LocalComponent, *,
                       directory: Path) -> None:
        """Wait until the component answers its health check; ComponentFailed if it exits
        first or does not answer in time."""
        name = running.component
        deadline = time.monotonic() + self.cfg.start_timeout.total_seconds()
        url = f"http://{self.cfg.host}:{running.port}{spec.health or '/'}"
        last = "no answer yet"
        timeout = aiohttp.ClientTimeout(total=_CHECK_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if not detached.alive(running.pid, running.ident):
                    raise await self._exited(running, directory)
                if spec.health is None:
                    return
                try:
                    async with session.get(url) as response:
                        if 200 <= response.status < 300:
                            return
                        last = f"HTTP {response.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = type(exc).__name__
                if time.monotonic() >= deadline:
                    logs = self._tail(running, directory)
                    raise ComponentFailed(
                        name, f"did not answer {spec.health} on port {running.port} within "
                        f"{self.cfg.start_timeout.total_seconds():g}s (last: {last})", logs=logs)
                await asyncio.sleep(_POLL)

    async def _exited(self, running: Running, directory: Path) -> ComponentFailed:
        exit_file = _path(directory, running.component, "exit")
        code = None
        for _ in range(50):  # the wrapper writes the code right after its child ends
            code = detached.exit_status(exit_file)
            if code is not None:
                break
            await asyncio.sleep(0.01)
        how = f"exited with code {code}" if code is not None else "stopped"
        return ComponentFailed(running.component, f"{how} while starting",
                               logs=self._tail(running, directory))

    def _tail(self, running: Running, directory: Path) -> str:
        text = detached.tail(_path(directory, running.component, "log"), LOG_LINES,
                             since=running.log_offset)
        return redaction.scrub(text)

    def _command(self, spec: LocalComponent, planned: Planned, *, ctx: PhaseContext,
                 port: int) -> list[str]:
        values = {"{python}": self.python, "{port}": str(port), "{version}": planned.version,
                  "{component}": planned.component, "{env}": ctx.name}
        return [_fill(arg, values) for arg in spec.command]

    def _deployed(self, running: Running, spec: LocalComponent) -> Deployed:
        link = f"http://{self.cfg.host}:{running.port}/" if spec.expose else None
        return Deployed(running.component, running.version, link=link,
                        facts={"pid": running.pid, "port": running.port})

    # ------------------------------------------------------------------ remove

    async def remove(self, ctx: PhaseContext) -> None:
        directory = self.directory(ctx)
        if not directory.exists():
            return
        stopped = await _stop_all(directory, grace=self.stop_grace)
        if stopped:
            await ctx.emit(f"stopped {', '.join(stopped)}")

    # ------------------------------------------------------------------ orphans

    def orphans(self, live_ids: Collection[int]) -> list[LocalOrphan]:
        return find_orphans(self.root.parent, live_ids)

    async def remove_orphan(self, orphan: LocalOrphan) -> list[str]:
        return await stop_orphan(orphan, grace=self.stop_grace)


def find_orphans(state_dir: Path, live_ids: Collection[int]) -> list[LocalOrphan]:
    """Environment directories under `state_dir` whose environment is not live (by id), with
    the pids still running in them. For the orphan finder: it needs no blueprint."""
    root = state_dir / "local"
    found: list[LocalOrphan] = []
    if not root.is_dir():
        return found
    for directory in sorted(root.iterdir()):
        m = _ENV_DIR.match(directory.name)
        if m is None or not directory.is_dir() or int(m["id"]) in live_ids:
            continue
        pids = tuple(r.pid for r in _states(directory) if detached.alive(r.pid, r.ident))
        found.append(LocalOrphan(int(m["id"]), m["name"], directory, pids))
    return found


async def stop_orphan(orphan: LocalOrphan, *, grace: float = 5.0) -> list[str]:
    """Stop an orphan's processes and forget its directory; the components stopped."""
    return await _stop_all(orphan.directory, grace=grace)


async def _stop_all(directory: Path, *, grace: float) -> list[str]:
    stopped: list[str] = []
    for running in _states(directory):
        if detached.alive(running.pid, running.ident):
            await detached.stop(running.pid, grace=grace)
            stopped.append(running.component)
    _forget(directory)
    return stopped


def _forget(directory: Path) -> None:
    """The environment's state files and logs, and their directory."""
    for path in directory.iterdir():
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()


def _path(directory: Path, component: str, what: str) -> Path:
    return directory / f"{component}.{what}"


def _read_state(directory: Path, component: str) -> Running | None:
    try:
        raw = json.loads(_path(directory, component, "json").read_text())
        return Running(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _states(directory: Path) -> list[Running]:
    found = []
    for path in sorted(directory.glob("*.json")):
        state = _read_state(directory, path.stem)
        if state is not None:
            found.append(state)
    return found


def _write_state(directory: Path, running: Running) -> None:
    path = _path(directory, running.component, "json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(running)))
    os.replace(tmp, path)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _fill(arg: str, values: Mapping[str, str]) -> str:
    for placeholder, value in values.items():
        arg = arg.replace(placeholder, value)
    return arg

