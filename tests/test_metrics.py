"""`GET /metrics` of a running `ephem serve`: what an operator's dashboard and alerts read.

A real bot process, a blueprint with a scheduled snapshot of a small production-like database
and a warm pool, a create run to its end, and a Slack that refuses one call: the page shows each
phase's duration and outcome, the queue, the snapshot's age beside its schedule (what the
stale-snapshot alert compares), the pool's size, and the Slack API error by method and code.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bot.cli.sample_data import SHOP, make_production
from tests.slackapi import SlackApi, SlackSender, slack_api_fixture  # noqa: F401
from tests.test_serve import _free_port, _ready

SIGNING = "metrics-signing-secret"


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_of_a_running_bot(slack_api: SlackApi, bot_db_url: str,
                                        pg_admin_url: str, db_prefix: str, tmp_path: Path,
                                        store: object) -> None:
    del store
    source = await make_production(pg_admin_url, f"{db_prefix}metrics_prod", customers=40)
    port = _free_port()
    blueprint = tmp_path / "ephem.yaml"
    blueprint.write_text(yaml.safe_dump({"phases": {"data": {
        "server": pg_admin_url, "database_prefix": f"{db_prefix}m_",
        "snapshots": {"shop": {"source": source.url, "rules": str(SHOP / "masking.yaml"),
                               "pool": 1, "schedule": "6h"}},
    }}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    env |= {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(blueprint),
            "SLACK_BOT_TOKEN": "xoxb-metrics", "SLACK_SIGNING_SECRET": SIGNING,
            "SLACK_API_URL": slack_api.url, "EPHEM_HTTP_PORT": str(port),
            "EPHEM_HTTP_HOST": "127.0.0.1", "EPHEM_POLL_SECONDS": "0.2",
            "EPHEM_SCHEDULER_SECONDS": "0.5", "EPHEM_SECRET_KEY": "metrics-key",
            "EPHEM_GRACE_SECONDS": "5"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    async def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as resp:
            assert resp.status == 200
            return _samples(await resp.text())

    try:
        await _ready(base + "/readyz")
        slack_api.fail("conversations.info", times=1, error="channel_not_found")
        sender = SlackSender(base + "/slack/events", SIGNING)
        await sender.command("create mt-0 --data none", user_id="UANA", channel_id="CGONE")
        await slack_api.wait_for("chat.postEphemeral",
                                 lambda c: c.params.get("channel") == "CGONE", timeout=20)
        status, _ = await sender.command("create mt-1 --data none", user_id="UANA",
                                         channel_id="CMET")
        assert status == 200
        await slack_api.wait_for(
            "chat.update", lambda c: "mt-1 · ready" in str(c.params.get("blocks")), timeout=60)

        async def until_pool_is_full() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
            while True:
                samples = await scrape()
                if _value(samples, "ephem_pool_ready", snapshot="shop") == 1.0:
                    return samples
                await asyncio.sleep(0.3)

        samples = await asyncio.wait_for(until_pool_is_full(), 120)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert proc.returncode == 0, log

    # Each phase's duration and outcome.
    assert _value(samples, "ephem_phase_seconds_count", phase="data", action="apply",
                  status="succeeded") == 1.0
    assert _value(samples, "ephem_jobs_total", kind="create", outcome="succeeded") == 1.0
    # The queue, from the database.
    assert _value(samples, "ephem_queue_depth") == 0.0
    assert _value(samples, "ephem_queue_oldest_seconds") == 0.0
    # The snapshot: built by the keeper on its first tick, young, beside its schedule.
    age = _value(samples, "ephem_snapshot_age_seconds", snapshot="shop")
    assert age is not None and 0 <= age < 6 * 3600
    assert _value(samples, "ephem_snapshot_schedule_seconds", snapshot="shop") == 6 * 3600.0
    assert _value(samples, "ephem_pool_target", snapshot="shop") == 1.0
    # Slack's refusal, by method and Slack's code.
    assert _value(samples, "ephem_slack_api_errors_total", method="conversations.info",
                  error="channel_not_found") == 1.0
    assert (_value(samples, "ephem_slack_api_calls_total", method="chat.update", outcome="ok")
            or 0) >= 1
