"""The shop's components — `api`, `web` and `worker` — as tiny stand-ins for the example
`local` deployer: `shop.py NAME TABLE`.

An HTTP server on $HOST:$PORT answering `GET /` with its name, its version ($VERSION) and how
many rows TABLE has in the environment's database ($DATABASE_URL), and `GET /healthz` with
`ok`. Ephem starts it with the interpreter it runs on, which has aiohttp and asyncpg.
"""

from __future__ import annotations

import os
import sys

import asyncpg
from aiohttp import web

NAME, TABLE = sys.argv[1], sys.argv[2]


async def rows(url: str | None) -> int | None:
    if not url:
        return None
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}"))
    finally:
        await conn.close()


async def index(_: web.Request) -> web.Response:
    answer: dict[str, object] = {"component": NAME, "version": os.environ.get("VERSION"),
                                 "table": TABLE}
    try:
        answer["rows"] = await rows(os.environ.get("DATABASE_URL"))
    except (OSError, asyncpg.PostgresError) as exc:
        answer["rows"], answer["error"] = None, type(exc).__name__
    return web.json_response(answer)


async def health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/healthz", health)
    print(f"{NAME} {os.environ.get('VERSION')} listening on port {os.environ['PORT']}", flush=True)
    web.run_app(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ["PORT"]),
                print=None)
