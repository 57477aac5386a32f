"""Settings (from the environment) and the blueprint (`ephem.yaml`, what an environment is).

Why: this is the only module that reads `os.environ`. Everything else receives a `Settings` or a
`Blueprint` value, so tests build them explicitly and nothing changes behind their back.
Invalid configuration fails at start with a message naming the file, the key path and what was
expected, never with a trace.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

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
    secret_key: SecretStr = Field(default=SecretStr(""), alias="EPHEM_SECRET_KEY")
    masking_key: SecretStr = Field(default=SecretStr(""), alias="EPHEM_MASKING_KEY")
    log_level: str = Field(default="INFO", alias="EPHEM_LOG_LEVEL")

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, v: str) -> str:
        return v if v.endswith("/") else v + "/"

    @property
    def socket_mode(self) -> bool:
        return bool(self.slack_app_token and self.slack_app_token.get_secret_value())


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (and `.env`); `overrides` win. Raises ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "environment")) from None


def env_var(name: str) -> str | None:
    """The one sanctioned read of a single environment variable (e.g. a secret the blueprint
    names by reference, or a test switch)."""
    return os.environ.get(name)


_OWN_PREFIXES = ("EPHEM_", "SLACK_")


def child_environment() -> dict[str, str]:
    """A copy of this process's environment: the base of every subprocess's (`bot.proc`).

    Ephem's own settings (`EPHEM_*`, `SLACK_*`: the bot token, the secret key, the state
    database URL) are left out — a project's migration command or Terraform module has no
    business seeing them. Callers add to the copy; nothing writes to `os.environ`.
    """
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(_OWN_PREFIXES)}


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
    `${VAR:-default}` falls back to `default` when it is unset."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            found = os.environ.get(m.group(1), m.group(2))
            if found is None:
                raise ValueError(f"environment variable {m.group(1)} is not set")
            return found

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


class Channels(_Strict):
    approvals: str | None = None


class Reference(_Strict):
    """A long-lived environment others are made to match (`--match staging`)."""

    description: str = ""
    releases: dict[str, str] = Field(default_factory=dict)


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

    @model_validator(mode="after")
    def _consistent(self) -> MigrationsConfig:
        if self.kind == "command" and not self.command:
            raise ValueError("kind `command` needs `command` (a list: program and arguments)")
        if self.kind == "builtin" and self.command:
            raise ValueError("`command` is only for kind `command`")
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
        return v


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
    code: dict[str, Any] | None = None
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
    references: dict[str, Reference] = Field(default_factory=dict)
    components: dict[str, Component] = Field(default_factory=dict)
    phases: Phases = Phases()
    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


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
        raise ConfigError(_describe(exc, source)) from None
