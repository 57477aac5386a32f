"""Prometheus metrics, registered once on a registry of Ephem's own.

Why a module of its own: the Slack edge, the executor and the pipeline runner all count things,
and `GET /metrics` must serve them together. A private `REGISTRY` (instead of prometheus_client's
global default) keeps tests and repeated app construction from colliding on duplicate names; the
HTTP server renders exactly this registry. Label values must stay few: verbs, methods, phases and
outcomes, never user input.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

COMMANDS = Counter(
    "ephem_commands",
    "Commands, mentions and button clicks handled, by verb and outcome (ok, error).",
    ["verb", "outcome"],
    registry=REGISTRY,
)
SLACK_API_CALLS = Counter(
    "ephem_slack_api_calls",
    "Slack Web API attempts, by method and outcome "
    "(ok, ratelimited, server_error, connection_error, error).",
    ["method", "outcome"],
    registry=REGISTRY,
)
SLACK_API_RETRIES = Counter(
    "ephem_slack_api_retries",
    "Slack writes put back in the outbox to try again, by method and reason "
    "(ratelimited: Slack said when; unavailable: 5xx, connection, token).",
    ["method", "reason"],
    registry=REGISTRY,
)
SLACK_OUTBOX_DROPPED = Counter(
    "ephem_slack_outbox_dropped",
    "Slack writes given up, by kind and reason (refused: an error Slack would repeat; "
    "too_old: Slack away for longer than the outbox waits; unexpected).",
    ["kind", "reason"],
    registry=REGISTRY,
)
SOCKET_RECONNECTS = Counter(
    "ephem_socket_reconnects",
    "Socket Mode connections replaced by the watchdog, by reason.",
    ["reason"],
    registry=REGISTRY,
)
JOBS = Counter(
    "ephem_jobs",
    "Jobs finished, by kind (create, destroy) and outcome.",
    ["kind", "outcome"],
    registry=REGISTRY,
)
JOBS_RUNNING = Gauge(
    "ephem_jobs_running",
    "Jobs running in this process now.",
    registry=REGISTRY,
)
PHASE_SECONDS = Histogram(
    "ephem_phase_seconds",
    "Duration of one phase attempt, by phase, action (apply, destroy) and final status.",
    ["phase", "action", "status"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
    registry=REGISTRY,
)
SLACK_REFUSED = Counter(
    "ephem_slack_requests_refused",
    "Requests to POST /slack/events refused before any listener, by reason "
    "(unsigned, malformed, too_large, unhandled).",
    ["reason"],
    registry=REGISTRY,
)
ACK_SECONDS = Histogram(
    "ephem_ack_seconds",
    "Time from a Slack request's arrival to its acknowledgement (Slack gives up after 3 s).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5),
    registry=REGISTRY,
)
# The queue as the database has it, set on the scheduler's beat by one query (every replica
# reports the same values: alert on max()).
QUEUE_DEPTH = Gauge(
    "ephem_queue_depth",
    "Jobs queued and not yet claimed, across all replicas.",
    registry=REGISTRY,
)
QUEUE_OLDEST_SECONDS = Gauge(
    "ephem_queue_oldest_seconds",
    "How long the oldest queued job has been claimable and not claimed (0 when none is).",
    registry=REGISTRY,
)
JOB_OLDEST_RUNNING_SECONDS = Gauge(
    "ephem_job_oldest_running_seconds",
    "Time since the longest-running job started (0 when none runs).",
    registry=REGISTRY,
)
REAPER_FAILURES = Counter(
    "ephem_reaper_failures",
    "Scheduler ticks (reminders and the reaper of expired environments) that failed.",
    registry=REGISTRY,
)
SLACK_API_ERRORS = Counter(
    "ephem_slack_api_errors",
    "Slack Web API calls that failed, by method and error (Slack's error code, or "
    "ratelimited, http_5xx, connection_error).",
    ["method", "error"],
    registry=REGISTRY,
)
# Snapshots and their warm pools, set on the scheduler's beat by the snapshot keeper.
SNAPSHOT_AGE_SECONDS = Gauge(
    "ephem_snapshot_age_seconds",
    "Age of each snapshot's newest build (+Inf while none is built).",
    ["snapshot"],
    registry=REGISTRY,
)
SNAPSHOT_SCHEDULE_SECONDS = Gauge(
    "ephem_snapshot_schedule_seconds",
    "How often each scheduled snapshot is rebuilt (absent for a snapshot without a schedule): "
    "the stale-snapshot alert compares the age with it.",
    ["snapshot"],
    registry=REGISTRY,
)
POOL_READY = Gauge(
    "ephem_pool_ready",
    "Ready clones in each snapshot's warm pool.",
    ["snapshot"],
    registry=REGISTRY,
)
POOL_TARGET = Gauge(
    "ephem_pool_target",
    "Clones each snapshot's warm pool is kept filled to (the blueprint's `pool`).",
    ["snapshot"],
    registry=REGISTRY,
)


def slack_error_label(code: str) -> str:
    """A Slack error code as a metric label: Slack's own short codes, anything else `other`."""
    if code.startswith("HTTP 5"):
        return "http_5xx"
    if code.startswith("connection_error"):
        return "connection_error"
    return code if _SLACK_CODE.fullmatch(code) else "other"


_SLACK_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")
