"""Release sources against real programs and a real HTTP server: what they answer, how they
fail, and the resolver turning both into something a person can act on."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from bot.config import parse_blueprint
from bot.domain import ReleaseSet
from bot.errors import PermanentError, UserError
from pipelines.code.sources import Resolver, parse_releases

TOKEN = "s3cret-release-token"


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def resolver(source: dict[str, Any]) -> Resolver:
    bp = parse_blueprint({"references": {"staging": {"source": source}}})
    return Resolver(bp.references)


SHAPES = [
    ({"api": "2.7.3", "web": "5.1.0"}, {"api": "2.7.3", "web": "5.1.0"}),
    ({"releases": {"api": "2.7.3"}}, {"api": "2.7.3"}),
    ({"components": [{"component": "api", "version": "sha256:ab"}]}, {"api": "sha256:ab"}),
    ([{"name": "api", "version": "2.7.3"}, {"name": "web", "version": "5.1.0"}],
     {"api": "2.7.3", "web": "5.1.0"}),
    ({"api": " 2.7.3 "}, {"api": "2.7.3"}),
]


@pytest.mark.parametrize(("data", "expected"), SHAPES)
def test_shapes_a_source_may_answer(data: Any, expected: dict[str, str]) -> None:
    assert parse_releases(data) == expected


BAD_SHAPES = [
    ("just text", "not a JSON object or list"),
    ({}, "names no component"),
    ({"api": 2.1}, "version 2.1, which is not a string (quote it)"),
    ({"api": ""}, "gives component api no version"),
    ([1, 2], "not of"),
    ([{"version": "1"}], "names a component None"),
]


@pytest.mark.parametrize(("data", "fragment"), BAD_SHAPES)
def test_what_is_wrong_with_an_answer_is_said(data: Any, fragment: str) -> None:
    with pytest.raises(PermanentError) as err:
        parse_releases(data)
    assert fragment in err.value.reason


async def test_command_source_reads_the_json_a_program_prints() -> None:
    code = ("import json, sys; print('fetching instance staging…', file=sys.stderr); "
            "print(json.dumps({'releases': {'api': '2.7.3', 'web': '5.1.0'}}, indent=2))")
    found = await resolver({"kind": "command", "command": py(code)}).resolve("staging")
    assert found == ReleaseSet({"api": "2.7.3", "web": "5.1.0"})


async def test_command_source_of_many_components_is_read_whole() -> None:
    code = ("import json; print(json.dumps({f'c{i:03}': f'1.{i}.0' for i in range(400)}, "
            "indent=2))")
    found = await resolver({"kind": "command", "command": py(code)}).resolve("staging")
    assert len(found.versions) == 400 and found.versions["c399"] == "1.399.0"


@pytest.mark.parametrize(("command", "fragments"), [
    (py("import sys; print('no such instance', file=sys.stderr); sys.exit(2)"),
     ["from command", "exited with code 2", "no such instance"]),
    (py("print('hello')"), ["printed no JSON"]),
    (py("pass"), ["printed nothing"]),
    (py("print('{\"api\": 1}')"), ["version 1, which is not a string"]),
    (["/nonexistent/releases-cli"], ["executable not found"]),
])
async def test_command_source_failures_are_refusals(command: list[str],
                                                   fragments: list[str]) -> None:
    with pytest.raises(UserError) as err:
        await resolver({"kind": "command", "command": command}).resolve("staging")
    text = str(err.value)
    assert "I could not read the release set of `staging`" in text
    for fragment in fragments:
        assert fragment in text


async def test_command_source_times_out_and_its_process_is_gone(tmp_path: Any) -> None:
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with pytest.raises(UserError) as err:
        await resolver({"kind": "command", "command": py(code), "timeout": "1s"}
                       ).resolve("staging")
    assert "no answer within 1s" in str(err.value)
    import os

    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.fixture
async def registry() -> AsyncIterator[tuple[str, list[str | None]]]:
    """An HTTP release registry: `/instances/staging` needs the bearer token."""
    seen: list[str | None] = []

    async def instance(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        name = request.match_info["name"]
        if name == "staging":
            return web.json_response([{"component": "api", "version": "2.7.3"},
                                      {"component": "web", "version": "5.1.0"}])
        if name == "garbled":
            return web.Response(text="<html>oops</html>")
        return web.json_response({"error": "no such instance"}, status=404)

    app = web.Application()
    app.router.add_get("/instances/{name}", instance)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_http_source_sends_the_token_from_the_environment(
        registry: tuple[str, list[str | None]], monkeypatch: pytest.MonkeyPatch) -> None:
    base, seen = registry
    monkeypatch.setenv("RELEASES_TOKEN", TOKEN)  # the process environment the blueprint reads
    found = await resolver({"kind": "http", "url": f"{base}/instances/staging",
                            "token": "${RELEASES_TOKEN}"}).resolve("staging")
    assert found == ReleaseSet({"api": "2.7.3", "web": "5.1.0"})
    assert seen == [f"Bearer {TOKEN}"]


@pytest.mark.parametrize(("path", "token", "fragments"), [
    ("/instances/staging", "wrong-token-value", ["answered HTTP 401", "is the token right?"]),
    ("/instances/nope", TOKEN, ["answered HTTP 404"]),
    ("/instances/garbled", TOKEN, ["not JSON"]),
])
async def test_http_source_failures_are_refusals(registry: tuple[str, list[str | None]],
                                                path: str, token: str,
                                                fragments: list[str]) -> None:
    base, _ = registry
    with pytest.raises(UserError) as err:
        await resolver({"kind": "http", "url": base + path, "token": token}).resolve("staging")
    for fragment in fragments:
        assert fragment in str(err.value)
    assert token not in str(err.value)


async def test_http_source_that_does_not_answer_is_refused() -> None:
    # A port nobody listens on: refused at once, and said so.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError) as err:
        await resolver({"kind": "http", "url": f"http://127.0.0.1:{port}/x"}).resolve("staging")
    assert "could not be reached" in str(err.value)


async def test_static_and_unknown_references() -> None:
    bp = parse_blueprint({"references": {"staging": {"releases": {"api": "1"}}}})
    assert await Resolver(bp.references).resolve("staging") == ReleaseSet({"api": "1"})
    with pytest.raises(UserError) as err:
        await Resolver(bp.references).resolve("prod")
    assert "no reference environment `prod`" in str(err.value)


def test_blueprint_refuses_both_a_static_set_and_a_source() -> None:
    from bot.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_blueprint({"references": {"staging": {
            "releases": {"api": "1"}, "source": {"kind": "command", "command": ["x"]}}}})
    assert "references.staging" in str(err.value) and "not both" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_blueprint({"references": {"s": {"source": {"kind": "http", "url": "x",
                                                         "token": "${NOT_SET_ANYWHERE_9}"}}}})
    assert "NOT_SET_ANYWHERE_9 is not set" in str(err.value)
    _ = json  # used above
