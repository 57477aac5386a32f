"""Settings (from the environment) and the blueprint (`ephem.yaml`, what an environment is).

Why: this is the only module that reads `os.environ`. Everything else receives a `Settings` or a
`Blueprint` value, so tests build them explicitly and nothing changes behind their back.
Invalid configuration fails at start with a message naming the file, the key path and what was
expected, never with a trace.

Because every secret Ephem is given arrives through here, this is also where they are
registered with `bot.redaction`: the settings' tokens and keys, the password of every URL, and
each value a blueprint takes from the environment (`${VAR}`, `pass_env`). A subprocess's
environment is built here too (`child_environment`), from an allow-list rather than a copy.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import os
import re
import types
import typing
from collections.abc import Iterable
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot import redaction
from bot.domain import DataMode, parse_duration
from bot.errors import ConfigError, UserError

DEFAULT_SLACK_API_URL = "https://slack.com/api/"


class Settings(BaseSettings):
    """Process settings. Names are the environment variables, case-insensitive."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    slack_bot_token: SecretStr = Field(default=SecretStr(""), alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr = Field(default=SecretStr(""), alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(default=None, alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field(default=DEFAULT_SLACK_API_URL, alias="SLACK_API_URL")
    database_url: str = Field(default="", alias="EPHEM_DATABASE_URL")
    config: Path | None = Field(default=None, alias="EPHEM_CONFIG")
    http_port: int = Field(default=3000, alias="EPHEM_HTTP_PORT", ge=0, le=65535)
    http_host: str = Field(default="0.0.0.0", alias="EPHEM_HTTP_HOST")  # noqa: S104
    workers: int = Field(default=4, alias="EPHEM_WORKERS", ge=0, le=64)
    lease_seconds: float = Field(default=30.0, alias="EPHEM_LEASE_SECONDS", gt=0)
    poll_seconds: float = Field(default=1.0, alias="EPHEM_POLL_SECONDS", gt=0)
    grace_seconds: float = Field(default=60.0, alias="EPHEM_GRACE_SECONDS", ge=0)
    scheduler_seconds: float = Field(default=60.0, alias="EPHEM_SCHEDULER_SECONDS", gt=0)
    # After start-up: how often auth.test is asked again, and how long Slack may be
    # unreachable before the process says it is not ready.
    slack_recheck_seconds: float = Field(default=300.0, alias="EPHEM_SLACK_RECHECK_SECONDS",
                                         gt=0)
    slack_unreachable_seconds: float = Field(default=120.0,
                                             alias="EPHEM_SLACK_UNREACHABLE_SECONDS", ge=0)
    secret_key: SecretStr = Field(default=SecretStr(""), alias="EPHEM_SECRET_KEY")
    masking_key: SecretStr = Field(default=SecretStr(""), alias="EPHEM_MASKING_KEY")
    log_level: str = Field(default="INFO", alias="EPHEM_LOG_LEVEL")
    # The state database's connection pool, per process (see the README for the arithmetic).
    db_pool_size: int = Field(default=5, alias="EPHEM_DB_POOL_SIZE", ge=1, le=100)
    db_max_overflow: int = Field(default=5, alias="EPHEM_DB_MAX_OVERFLOW", ge=0, le=100)
    db_pool_timeout: float = Field(default=30.0, alias="EPHEM_DB_POOL_TIMEOUT", gt=0)
    # The largest request body `POST /slack/events` reads; larger ones are answered 413.
    http_max_body: int = Field(default=64 * 1024, alias="EPHEM_HTTP_MAX_BODY", ge=1024,
                               le=16 * 1024 * 1024)
    # Where state that must outlive this process is kept on this machine (the `local`
    # deployer's pid files and logs). None: `state_directory()` picks the XDG default.
    state_dir: Path | None = Field(default=None, alias="EPHEM_STATE_DIR")

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, v: str) -> str:
        return v if v.endswith("/") else v + "/"

    @model_validator(mode="after")
    def _register_secrets(self) -> Settings:
        """Every token and key, and the state database's password, are secrets from here on."""
        for secret in (self.slack_bot_token, self.slack_signing_secret, self.slack_app_token,
                       self.secret_key, self.masking_key):
            if secret is not None:
                redaction.register(secret.get_secret_value())
        register_url_password(self.database_url)
        return self

    @property
    def socket_mode(self) -> bool:
        return bool(self.slack_app_token and self.slack_app_token.get_secret_value())


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (and `.env`); `overrides` win. Raises ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "environment")) from None


def masking_key(settings: Settings) -> bytes:
    """EPHEM_MASKING_KEY; else derived from EPHEM_SECRET_KEY; else empty (builds refuse)."""
    key = settings.masking_key.get_secret_value()
    if key:
        return key.encode()
    secret = settings.secret_key.get_secret_value()
    if secret:
        return hmac.new(secret.encode(), b"ephem-masking", hashlib.sha256).digest()
    return b""


def state_directory(settings: Settings) -> Path:
    """`EPHEM_STATE_DIR`, else `$XDG_STATE_HOME/ephem`, else `~/.local/state/ephem`."""
    if settings.state_dir is not None:
        return settings.state_dir
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "ephem"
def user_data_dir() -> Path:
    """Where Ephem keeps a person's own files (the shell's history): `$XDG_DATA_HOME/ephem`,
    else `~/.local/share/ephem`."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ephem"


def env_var(name: str) -> str | None:
    """The one sanctioned read of a single environment variable (e.g. a secret the blueprint
    names by reference, or a test switch)."""
    return os.environ.get(name)


def register_url_password(url: str | None) -> None:
    """Register the password of `url` (as written and URL-decoded) as a secret."""
    if not url:
        return
    try:
        password = urlsplit(url).password
    except ValueError:  # not a URL after all: nothing to register
        return
    if password:
        redaction.register(password, unquote(password))


# What a tool may see of Ephem's own environment. Everything else — the `${VAR}` a blueprint
# takes a password from, a cloud credential, Ephem's settings — stays out unless the blueprint
# passes it explicitly (`pass_env`, `env`) or the phase sets it (DATABASE_URL, TF_VAR_…).
CHILD_ALLOWED = frozenset({
    "PATH",  # to find the tool and the programs it runs
    "HOME",  # where tools keep their configuration (~/.terraformrc, ~/.pgpass, caches)
    "LANG", "LANGUAGE",  # the locale: how the tool encodes its output (LC_* below too)
    "TZ",  # timestamps in the tool's output and logs
    "TMPDIR",  # where temporary files go (a read-only root or a small /tmp in containers)
    "USER", "LOGNAME",  # who runs it: libraries ask for the user name (getpass, libpq's
                        # default user) and fail without a passwd entry in containers
})
CHILD_ALLOWED_PREFIXES = ("LC_",)
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def child_environment(pass_env: Iterable[str] = ()) -> dict[str, str]:
    """The base of every subprocess's environment (`bot.proc`): an allow-list, not a copy.

    Only `CHILD_ALLOWED` and `LC_*` are taken from this process's environment, plus the
    variables named in `pass_env` (a blueprint's explicit choice; their values are registered
    as secrets, since nothing says they are not). Callers add what the phase itself sets;
    nothing writes to `os.environ`.
    """
    env = {k: v for k, v in os.environ.items()
           if k in CHILD_ALLOWED or k.startswith(CHILD_ALLOWED_PREFIXES)}
    for name in pass_env:
        value = os.environ.get(name)
        if value is not None:
            redaction.register(value)
            env[name] = value
    return env


# --------------------------------------------------------------------------- blueprint


def _duration(value: object) -> object:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: object) -> object:
    """`${VAR}` in a string is replaced by that environment variable (for secrets in URLs);
    `${VAR:-default}` falls back to `default` when it is unset.

    Every value taken from the environment this way is registered as a secret (the default,
    written in the file itself, is not): Ephem cannot tell a password from a host name, so it
    masks both wherever they would be shown.
    """
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            found = os.environ.get(m.group(1))
            if found is not None:
                redaction.register(found)
                return found
            if m.group(2) is None:
                raise ValueError(f"environment variable {m.group(1)} is not set")
            return m.group(2)

        return _ENV_REF.sub(sub, value)
    return value


Expanded = Annotated[str, BeforeValidator(_expand)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Strict):
    ttl: Duration = timedelta(days=2)
    max_ttl: Duration = timedelta(days=14)
    reference: str | None = None
    data: DataMode = DataMode.SEED
    remind_before: Duration = timedelta(hours=4)
    # The second, last reminder: this long before expiry (or a sixteenth of the lifetime,
    # when shorter), so it always comes after the first. Unset: an hour, or a quarter of
    # `remind_before` when that is shorter.
    last_remind_before: Duration | None = None

    @property
    def last_reminder(self) -> timedelta:
        if self.last_remind_before is not None:
            return self.last_remind_before
        return min(timedelta(hours=1), self.remind_before / 4)

    @model_validator(mode="after")
    def _last_after_first(self) -> Defaults:
        last = self.last_remind_before
        if last is not None and last >= self.remind_before:
            raise ValueError("`last_remind_before` must be shorter than `remind_before` (the "
                             "last reminder comes after the first)")
        return self


class Channels(_Strict):
    approvals: Annotated[str, _slack_id("CG", "a Slack channel id", "C0123ABCD")] | None = None
    # Where reconciliation reports what it finds and removes (orphans); unset: the log only.
    operators: str | None = None


def _slack_id(prefixes: str, what: str, example: str) -> Any:
    pattern = re.compile(rf"[{prefixes}][A-Z0-9]{{1,30}}")

    def check(value: object) -> object:
        if isinstance(value, str) and not pattern.fullmatch(value):
            raise ValueError(f"expected {what} (like `{example}`; a name or an @handle will "
                             "not do)")
        return value

    return BeforeValidator(check)


SlackUserId = Annotated[str, _slack_id("UW", "a Slack user id", "U024BE7LH")]
SlackUsergroupId = Annotated[str, _slack_id("S", "a Slack user group id", "S0614TZR7")]


class ApproverRule(_Strict):
    """Who may decide on snapshot-derived data, and how many of them must approve.

    `users` are Slack user ids; `usergroup` is a Slack user group id (`S…`) whose members are
    read from Slack when a decision is made (`usergroups.users.list`, remembered briefly).
    """

    users: list[SlackUserId] = Field(default_factory=list)
    usergroup: SlackUsergroupId | None = None
    required: int = Field(default=1, ge=1, le=10)

    @property
    def configured(self) -> bool:
        return bool(self.users or self.usergroup)

    @model_validator(mode="after")
    def _enough(self) -> ApproverRule:
        if self.usergroup is None and self.users and self.required > len(self.users):
            raise ValueError(f"`required` is {self.required} but only {len(self.users)} "
                             "approver(s) are listed in `users` (and no `usergroup`)")
        return self


class Approvals(ApproverRule):
    """`approvals`: the rule for every snapshot, `snapshots.<name>` overriding it per snapshot,
    and how long approvers have to decide (`expire_after`) before the request lapses."""

    expire_after: Duration = timedelta(days=1)
    snapshots: dict[str, ApproverRule] = Field(default_factory=dict)

    def rule_for(self, snapshot: str, admins: list[str]) -> ApproverRule | None:
        """The rule that decides `snapshot`: its own, else the one for all, else the admins;
        None when nobody is configured to decide (no approval is asked then)."""
        own = self.snapshots.get(snapshot)
        if own is not None and own.configured:
            return own
        if self.configured:
            return ApproverRule(users=self.users, usergroup=self.usergroup,
                                required=self.required)
        if admins:
            return ApproverRule(users=list(admins), required=min(self.required, len(admins)))
        return None


class Quotas(_Strict):
    """Live environments allowed at once (destroyed ones do not count); None: no limit."""

    per_user: int | None = Field(default=None, ge=1)
    per_channel: int | None = Field(default=None, ge=1)


class Cost(_Strict):
    """Unit prices, to show what environments cost and keep a channel within its budget.

    Compute is priced on what the environment's namespace may request (the ResourceQuota's
    `requests.cpu` / `requests.memory`, else `cpu` / `memory`); the database on its measured
    size. All prices zero (the default): no cost is shown."""

    currency: str = Field(default="$", max_length=8)
    cpu_hour: float = Field(default=0.0, ge=0)
    gib_hour: float = Field(default=0.0, ge=0)
    db_gb_day: float = Field(default=0.0, ge=0)
    monthly_channel_budget: float | None = Field(default=None, gt=0)

    @property
    def priced(self) -> bool:
        return bool(self.cpu_hour or self.gib_hour or self.db_gb_day)


class Reconcile(_Strict):
    """The scheduler's orphan reconciliation: how often it looks, how long a found orphan is
    left alone (reported, not touched) before it is destroyed, and the backoff of a failing
    destroy."""

    enabled: bool = True
    every: Duration = timedelta(minutes=10)
    grace: Duration = timedelta(hours=1)
    retry_base: Duration = timedelta(minutes=1)
    retry_cap: Duration = timedelta(hours=1)


def _version(value: object) -> object:
    """A version must be written as text: YAML reads `2.10` unquoted as the number 2.1."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f"YAML read this version as the number {value!r}, which may have lost digits "
            "(`2.10` becomes 2.1): quote it, like `api: \"2.10\"`"
        )
    return value


Version = Annotated[str, BeforeValidator(_version)]




class Component(_Strict):
    image: str | None = None
    description: str = ""


def _resolve(value: object, info: ValidationInfo) -> object:
    """Relative paths in a blueprint are relative to the blueprint file's directory."""
    if isinstance(value, str | Path):
        base = (info.context or {}).get("base_dir")
        path = Path(value)
        return path if path.is_absolute() or base is None else Path(base) / path
    return value


ResolvedPath = Annotated[Path, BeforeValidator(_resolve)]


# --------------------------------------------------------------------------- release sources

def _expand_secret(value: object) -> object:
    return _expand(value.get_secret_value() if isinstance(value, SecretStr) else value)


ExpandedSecret = Annotated[SecretStr, BeforeValidator(_expand_secret)]
_DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_LABEL_KEY = r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"


class KubeAccess(_Strict):
    """How to reach a Kubernetes API: a kubeconfig file and context (the client's defaults —
    `$KUBECONFIG`, then `~/.kube/config`, and its current context — when not given), or the
    service account of the pod Ephem runs in."""

    kubeconfig: ResolvedPath | None = None
    context: str | None = None
    in_cluster: bool = False
    request_timeout: Duration = timedelta(seconds=30)  # one API call

    @model_validator(mode="after")
    def _one_way(self) -> KubeAccess:
        if self.in_cluster and (self.kubeconfig is not None or self.context is not None):
            raise ValueError("`in_cluster: true` takes no `kubeconfig` or `context`")
        return self


class WorkloadMatch(_Strict):
    """Which workload of a namespace is which component, and which container holds its image.

    A workload is a component by its `label` (`app.kubernetes.io/name` by default), unless
    `components` maps the component to the workload's name (`api: api-server`, or
    `api: Deployment/api-server` when names repeat across kinds). The image is the one of the
    container named `container`, else of the container named like the component, else of the
    first container.
    """

    label: str = Field(default="app.kubernetes.io/name", pattern=_LABEL_KEY)
    components: dict[str, str] = Field(default_factory=dict)
    container: str | None = None


class StaticSource(_Strict):
    """The set written in the blueprint (what `references.<env>.releases` says)."""

    kind: Literal["static"] = "static"
    releases: dict[str, Version] = Field(default_factory=dict)


class ClusterSource(KubeAccess, WorkloadMatch):
    """What a namespace runs now: the images of its Deployments, StatefulSets and CronJobs."""

    kind: Literal["cluster"]
    namespace: str = Field(pattern=_DNS_LABEL)
    timeout: Duration = timedelta(seconds=20)


class CommandSource(_Strict):
    """A program (a release registry's CLI) that prints the set as JSON on its stdout."""

    kind: Literal["command"]
    command: list[str] = Field(min_length=1)
    timeout: Duration = timedelta(seconds=30)


class HttpSource(_Strict):
    """A URL that answers the set as JSON; `token`, when given, is sent as a bearer token."""

    kind: Literal["http"]
    url: Expanded
    token: ExpandedSecret | None = None
    timeout: Duration = timedelta(seconds=10)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return v


ReleaseSourceConfig = Annotated[
    StaticSource | ClusterSource | CommandSource | HttpSource, Field(discriminator="kind")
]


class Reference(_Strict):
    """A long-lived environment others are made to match (`--match staging`).

    Its release set comes from `source`; `releases` alone is the static source, written out.
    """

    description: str = ""
    releases: dict[str, Version] = Field(default_factory=dict)
    source: ReleaseSourceConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Reference:
        if self.source is not None and self.releases:
            raise ValueError("give `releases` (a static set) or `source`, not both")
        return self

    @property
    def release_source(self) -> StaticSource | ClusterSource | CommandSource | HttpSource:
        return self.source if self.source is not None else StaticSource(releases=self.releases)


class MigrationsConfig(_Strict):
    """How an environment's schema and seed data are made.

    `builtin`: Flyway-style files (`V<version>__<name>.sql` once, in version order, then
    `R__<name>.sql` whenever its checksum changes) from `locations`, then `seed_locations` the
    same way (with `--data seed`; skipped with `--data none`). `command`: run `command` with the
    environment's connection URL in `DATABASE_URL` (and PG* variables).
    """

    kind: Literal["builtin", "command"] = "builtin"
    locations: list[ResolvedPath] = Field(default_factory=list)
    seed_locations: list[ResolvedPath] = Field(default_factory=list)
    command: list[str] | None = None
    timeout: Duration = timedelta(minutes=10)
    # Environment of the command beyond the allow-list (`child_environment`): variables set
    # here (values may use `${VAR}`), and variables of Ephem's own environment passed as they are.
    env: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Expanded] = Field(default_factory=dict)
    pass_env: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> MigrationsConfig:
        if self.kind == "command" and not self.command:
            raise ValueError("kind `command` needs `command` (a list: program and arguments)")
        if self.kind == "builtin" and self.command:
            raise ValueError("`command` is only for kind `command`")
        if self.kind == "builtin" and (self.env or self.pass_env):
            raise ValueError("`env` and `pass_env` are only for kind `command`")
        return self


class SnapshotConfig(_Strict):
    """A masked, subsetted copy of a source database, built into a golden template database."""

    source: Expanded  # read-only URL of the source (production) database
    rules: ResolvedPath  # the masking and subsetting rules file (YAML)
    keep: int = Field(default=2, ge=1, le=20)  # how many built snapshots are kept
    schedule: Duration | None = None  # rebuild this often (None: only `ephem snapshot build`)
    pool: int = Field(default=2, ge=0, le=20)  # ready clones kept warm per snapshot
    workers: int = Field(default=2, ge=1, le=16)  # parallel table copiers
    leak_sample: int = Field(default=200, ge=0)  # source values per masked column checked

    @field_validator("source")
    @classmethod
    def _pg_url(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a postgresql:// URL")
        register_url_password(v)
        return v


class DataPhaseConfig(_Strict):
    """Where per-environment databases live. `server` is an admin URL on the target server."""

    server: Expanded | None = None
    database_prefix: str = Field(default="ephem_", pattern=r"^[a-z_][a-z0-9_]{0,20}$")
    migrations: MigrationsConfig | None = None
    snapshots: dict[str, SnapshotConfig] = Field(default_factory=dict)
    default_snapshot: str | None = None

    @model_validator(mode="after")
    def _default_exists(self) -> DataPhaseConfig:
        if self.default_snapshot is not None and self.default_snapshot not in self.snapshots:
            raise ValueError(f"default_snapshot `{self.default_snapshot}` is not in `snapshots`")
        return self

    @field_validator("server")
    @classmethod
    def _pg_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")) \
                and not INFRA_OUTPUT.match(v):
            raise ValueError("expected a postgresql:// URL or `{infra.<output>}`")
        return v


# `{env.name}`, `{env.owner}`, `{env.expires_at}`, `{env.id}`, `{release.<component>}`: filled in
# per environment when the phase runs (`pipelines.infra.variables`).
PLACEHOLDER = re.compile(r"\{(env\.(?:name|owner|expires_at|id)|release\.[A-Za-z0-9_.-]+)\}")
_BRACED = re.compile(r"(?<!\$)\{([^{}]*)\}")
# `phases.data.server: "{infra.<output>}"`: the data phase's server is an infrastructure output.
INFRA_OUTPUT = re.compile(r"^\{infra\.([A-Za-z_][A-Za-z0-9_]*)\}$")


def _placeholders(value: object) -> object:
    """`${VAR}` is expanded now; `{…}` must be one of the placeholders filled in per run."""
    value = _expand(value)
    if isinstance(value, str):
        for m in _BRACED.finditer(value):
            if not PLACEHOLDER.fullmatch(m.group(0)):
                raise ValueError(f"unknown placeholder `{m.group(0)}`: use {{env.name}}, "
                                 "{env.owner}, {env.expires_at}, {env.id} or "
                                 "{release.<component>}")
    return value


Variable = Annotated[str | int | float | bool, BeforeValidator(_placeholders)]


class TerraformBackend(_Strict):
    """Where the state lives: the `pg` backend, one workspace per environment."""

    # None: Ephem's own database (EPHEM_DATABASE_URL). A secret: never logged or shown.
    conn_str: Expanded | None = None
    schema_name: str = Field(default="ephem_tf", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    @field_validator("conn_str")
    @classmethod
    def _pg_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a postgresql:// URL")
        register_url_password(v)
        return v


class LocalComponent(_Strict):
    """One component run as a process on this machine by the `local` deployer.

    `command` may use `{python}` (the interpreter running Ephem), `{port}`, `{version}`,
    `{component}` and `{env}`; it runs in `phases.code.local.workdir` with `PORT`, `VERSION`,
    `EPHEM_COMPONENT`, `EPHEM_ENV` and the data phase's connection in its environment.
    """

    command: list[str] = Field(min_length=1)
    health: str | None = "/healthz"  # HTTP path answered 2xx when ready; None: started is ready
    expose: bool = True  # gets a link in the thread
    env: dict[str, Expanded] = Field(default_factory=dict)

    @field_validator("health")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("expected a path starting with /")
        return v


class LocalDeployerConfig(_Strict):
    components: dict[str, LocalComponent] = Field(min_length=1)
    workdir: ResolvedPath = Field(default=Path("."), validate_default=True)
    host: str = "127.0.0.1"  # where the components listen, and what their links point at
    start_timeout: Duration = timedelta(seconds=30)
    database_env: str = Field(default="DATABASE_URL", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class KubernetesDeployerConfig(KubeAccess, WorkloadMatch):
    """Copy a reference namespace's workloads into the environment's namespace (the infra
    phase's output), images pinned to the release set."""

    source_namespace: str | None = Field(default=None, pattern=_DNS_LABEL)
    hosts: str | None = None  # e.g. "{host}-{env}.preview.example.com"
    link_scheme: Literal["http", "https"] = "https"
    secrets: list[str] = Field(default_factory=list)  # Secrets copied (by name); others are not
    database_env: str | None = Field(default="DATABASE_URL",
                                     pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    database_secret: str = Field(default="ephem-database", pattern=_DNS_LABEL)
    rollout_timeout: Duration = timedelta(minutes=10)
    poll: Duration = timedelta(seconds=2)  # rollout status is read this often

    @field_validator("hosts")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            v.format(env="e", component="c", host="h", name="n")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"a pattern may use {{env}}, {{component}}, {{host}} and "
                             f"{{name}} only ({exc})") from None
        return v


class CodePhaseConfig(_Strict):
    """How an environment's release set is deployed: `local` processes or `kubernetes`."""

    deployer: Literal["local", "kubernetes"]  # may be left out when one section is given
    local: LocalDeployerConfig | None = None
    kubernetes: KubernetesDeployerConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _infer(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("deployer") is None:
            given = [name for name in ("local", "kubernetes") if data.get(name) is not None]
            if len(given) != 1:
                raise ValueError("configure one deployer (`local` or `kubernetes`), or say "
                                 "which with `deployer`")
            return {**data, "deployer": given[0]}
        return data

    @model_validator(mode="after")
    def _chosen(self) -> CodePhaseConfig:
        if getattr(self, self.deployer) is None:
            raise ValueError(f"deployer `{self.deployer}` needs a `{self.deployer}` section")
        return self


class TerraformOutputs(_Strict):
    """Which outputs the thread shows (None: every one that is not sensitive) and which are
    secret (to the owner only; never persisted)."""

    show: list[str] | None = None
    secret: list[str] = Field(default_factory=list)


class TerraformConfig(_Strict):
    """`phases.infra.terraform`: one Terraform/OpenTofu apply per environment."""

    module: ResolvedPath
    binary: str | None = None  # `tofu`, `terraform` or a path; None: the first found on PATH
    variables: dict[str, Variable] = Field(default_factory=dict)
    backend: TerraformBackend = TerraformBackend()
    outputs: TerraformOutputs = TerraformOutputs()
    timeout: Duration = timedelta(minutes=30)
    parallelism: int = Field(default=10, ge=1, le=256)
    plugin_cache: ResolvedPath | None = None  # TF_PLUGIN_CACHE_DIR, filled beforehand
    provider_mirror: ResolvedPath | None = None  # a filesystem mirror; the only source used
    workdir: ResolvedPath | None = None  # root of the per-environment working directories
    lock_wait: Duration = timedelta(minutes=5)  # how long one attempt waits for a held lock

    @field_validator("module")
    @classmethod
    def _module_exists(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"module directory {v} does not exist")
        return v


class LimitsConfig(_Strict):
    """The namespace's LimitRange for containers (`default` is the default limit)."""

    default: dict[str, str] = Field(default_factory=dict)
    default_request: dict[str, str] = Field(default_factory=dict)
    max: dict[str, str] = Field(default_factory=dict)


class KubernetesConfig(_Strict):
    """`phases.infra.kubernetes`: a namespace per environment."""

    kubeconfig: ResolvedPath | None = None  # None: $KUBECONFIG or ~/.kube/config
    context: str | None = None
    in_cluster: bool = False  # the service account of the pod Ephem runs in
    namespace: str = Field(default="ephem-{name}")
    labels: dict[str, str] = Field(default_factory=dict)
    quota: dict[str, str] = Field(default_factory=dict)  # ResourceQuota spec.hard
    limits: LimitsConfig = LimitsConfig()
    network_policy: bool = True
    ingress_namespace: str | None = "ingress-nginx"
    destroy_timeout: Duration = timedelta(minutes=3)

    @field_validator("namespace")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if "{name}" not in v:
            raise ValueError("the namespace pattern needs `{name}` (like `ephem-{name}`)")
        sample = v.replace("{name}", "x")
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", sample) or len(sample) > 22:
            raise ValueError("the namespace pattern must make DNS labels: lowercase letters, "
                             "digits and hyphens, at most 22 characters besides the name")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> KubernetesConfig:
        if self.in_cluster and (self.kubeconfig or self.context):
            raise ValueError("`in_cluster` takes no `kubeconfig` or `context`")
        return self


class InfraPhaseConfig(_Strict):
    """Either provider or both; Terraform runs first, then the namespace."""

    terraform: TerraformConfig | None = None
    kubernetes: KubernetesConfig | None = None

    @model_validator(mode="after")
    def _something(self) -> InfraPhaseConfig:
        if self.terraform is None and self.kubernetes is None:
            raise ValueError("configure `terraform`, `kubernetes` or both (or leave out "
                             "`phases.infra`)")
        return self


class Phases(_Strict):
    infra: InfraPhaseConfig | None = None
    code: CodePhaseConfig | None = None
    data: DataPhaseConfig | None = None

    @model_validator(mode="after")
    def _server_from_infra(self) -> Phases:
        server = self.data.server if self.data is not None else None
        if server is not None and INFRA_OUTPUT.match(server) and self.infra is None:
            raise ValueError(f"phases.data.server is `{server}` but `phases.infra` is not "
                             "configured")
        return self


class Timeouts(_Strict):
    infra: Duration = timedelta(minutes=30)
    code: Duration = timedelta(minutes=15)
    data: Duration = timedelta(minutes=15)


class Retries(_Strict):
    attempts: int = Field(default=3, ge=1, le=20)
    backoff: Duration = timedelta(seconds=5)


class Blueprint(_Strict):
    version: Literal[1] = 1
    project: str = "ephem"
    defaults: Defaults = Defaults()
    channels: Channels = Channels()
    admins: list[str] = Field(default_factory=list)
    approvals: Approvals = Approvals()
    references: dict[str, Reference] = Field(default_factory=dict)
    components: dict[str, Component] = Field(default_factory=dict)
    phases: Phases = Phases()
    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()
    quotas: Quotas = Quotas()
    cost: Cost = Cost()
    reconcile: Reconcile = Reconcile()

    @model_validator(mode="after")
    def _approved_snapshots_exist(self) -> Blueprint:
        known = set(self.phases.data.snapshots) if self.phases.data is not None else set()
        for name in self.approvals.snapshots:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean `{close[0]}`?" if close else \
                    f" (known: {', '.join(sorted(known)) or 'none'})"
                raise ValueError(f"approvals.snapshots.{name}: there is no snapshot `{name}` "
                                 f"in phases.data.snapshots{hint}")
        return self


def _describe(exc: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    lines = [f"{source} is invalid:"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        if err["type"] == "extra_forbidden" and model is not None and err["loc"]:
            msg, shown = f"unknown key `{err['loc'][-1]}`", ""
            close = difflib.get_close_matches(str(err["loc"][-1]),
                                              known_keys(model, err["loc"][:-1]), n=1)
            if close:
                msg += f"; did you mean `{close[0]}`?"
        lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model an annotation holds (through Optional/Annotated), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            if (found := _model_in(arg)) is not None:
                return found
    return None


def _value_model(annotation: object) -> type[BaseModel] | None:
    """The model of a `dict[str, Model]`'s values, or None."""
    if typing.get_origin(annotation) is dict:
        return _model_in(typing.get_args(annotation)[1])
    return None


def known_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed at `loc` (a validation error's location) inside `model`."""
    current: type[BaseModel] | None = model
    pending_dict: type[BaseModel] | None = None
    for part in loc:
        if pending_dict is not None:  # `part` is a key of a dict of models
            current, pending_dict = pending_dict, None
            continue
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return []
        annotation = current.model_fields[part].annotation
        current, pending_dict = _model_in(annotation), _value_model(annotation)
    return list(current.model_fields) if current is not None and pending_dict is None else []


def example_blueprint_path() -> Path:
    """The example blueprint packaged with Ephem (also `examples/ephem.yaml` in the repo)."""
    return Path(str(resources.files("bot") / "examples" / "ephem.yaml"))


def load_blueprint(path: Path | None) -> Blueprint:
    """Load and validate a blueprint file; the packaged example when `path` is None."""
    path = path or example_blueprint_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (set EPHEM_CONFIG to your ephem.yaml)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_blueprint(raw if raw is not None else {}, source=str(path),
                           base_dir=path.parent)


def parse_blueprint(raw: object, *, source: str = "blueprint",
                    base_dir: Path | None = None) -> Blueprint:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return Blueprint.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, Blueprint)) from None
