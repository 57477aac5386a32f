"""The Helm chart in helm/ephem: its values schema, and what it renders.

Why: the chart is how teams run Ephem; a typo in a values file must be refused at install, not
discovered as a pod that starts without its settings. The schema part needs only `jsonschema`;
the rendering part runs the real `helm` binary and is skipped, with the reason, when none is on
PATH.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bot.config import Blueprint, parse_blueprint

CHART = Path(__file__).resolve().parent.parent / "helm" / "ephem"
HELM = shutil.which("helm")

# The environment contract (DESIGN.md) and where each variable must come from.
SECRET_ENV = {
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "EPHEM_DATABASE_URL",
    "EPHEM_SECRET_KEY",
}
PLAIN_ENV = {"SLACK_API_URL", "EPHEM_CONFIG", "EPHEM_HTTP_PORT", "EPHEM_WORKERS", "EPHEM_LOG_LEVEL"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def _errors(schema: dict[str, Any], values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in
            validator.iter_errors(values)]


def _object_schemas(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "properties" in node:
            yield path or "/", node
        for key, child in node.items():
            yield from _object_schemas(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _object_schemas(child, f"{path}/{i}")


# --------------------------------------------------------------------------- schema


def test_schema_is_valid_draft7(schema: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(schema)


def test_default_values_pass_the_schema(schema: dict[str, Any], values: dict[str, Any]) -> None:
    assert _errors(schema, values) == []


def test_every_defined_object_rejects_unknown_keys(schema: dict[str, Any]) -> None:
    open_objects = [path for path, node in _object_schemas(schema)
                    if node.get("additionalProperties") is not False]
    assert open_objects == []


def test_schema_and_values_list_the_same_top_level_keys(
    schema: dict[str, Any], values: dict[str, Any]
) -> None:
    assert set(schema["properties"]) == set(values)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ((), "replicas"),  # the real key is replicaCount
        (("image",), "tags"),
        (("settings",), "http_port"),
        (("secrets",), "slackToken"),
        (("ingress",), "host"),  # hosts is a list
        (("serviceMonitor",), "enable"),
        (("blueprint",), "default"),  # defaults
        (("securityContext",), "readOnlyRootFileSystem"),
    ],
)
def test_an_unknown_key_is_rejected(
    schema: dict[str, Any], values: dict[str, Any], path: tuple[str, ...], key: str
) -> None:
    bad = copy.deepcopy(values)
    node = bad
    for part in path:
        node = node[part]
    node[key] = "x"
    errors = _errors(schema, bad)
    assert len(errors) == 1
    assert repr(key) in errors[0]
    assert errors[0].startswith("/".join(path) + ":")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("settings", "logLevel"), "LOUD"),
        (("settings", "httpPort"), 70000),
        (("settings", "workers"), "four"),
        (("secrets", "databaseUrl"), "mysql://db/ephem"),
        (("image", "pullPolicy"), "Sometimes"),
        (("blueprint", "version"), 2),
        (("livenessProbe", "enabled"), "yes"),
    ],
)
def test_a_wrong_value_is_rejected(
    schema: dict[str, Any], values: dict[str, Any], path: tuple[str, ...], value: object
) -> None:
    bad = copy.deepcopy(values)
    node = bad
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert [e.split(":")[0] for e in _errors(schema, bad)] == ["/".join(path)]


def test_schema_blueprint_keys_follow_the_blueprint_model(schema: dict[str, Any]) -> None:
    assert set(schema["properties"]["blueprint"]["properties"]) == set(Blueprint.model_fields)


def test_default_blueprint_is_one_ephem_accepts(values: dict[str, Any]) -> None:
    blueprint = parse_blueprint(values["blueprint"], source="values.yaml blueprint")
    assert blueprint.version == 1


# --------------------------------------------------------------------------- rendering

needs_helm = pytest.mark.skipif(
    HELM is None,
    reason="no `helm` binary on PATH; the rendering tests need the real helm to run",
)


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def _render(*args: str) -> list[dict[str, Any]]:
    result = _helm("template", "rel", str(CHART), "--namespace", "ephem", *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


@needs_helm
def test_helm_lint_passes_strict() -> None:
    result = _helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_helm
def test_default_render_is_the_minimal_set() -> None:
    docs = _render()
    assert _kinds(docs) == ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"]


@needs_helm
def test_deployment_runs_ephem_serve_with_probes_and_a_hardened_container() -> None:
    docs = _render()
    pod = _one(docs, "Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["ephem", "serve"]
    assert container["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/etc/ephem"}

    service = _one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == _one(docs, "Deployment")["spec"]["selector"][
        "matchLabels"]


@needs_helm
def test_settings_become_env_from_secret_and_values() -> None:
    docs = _render("--set", "settings.workers=7", "--set", "settings.logLevel=DEBUG")
    secret = _one(docs, "Secret")
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = _env(container)
    assert set(env) >= SECRET_ENV | PLAIN_ENV
    for name in SECRET_ENV:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], name)
    assert env["SLACK_APP_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["EPHEM_WORKERS"]["value"] == "7"
    assert env["EPHEM_LOG_LEVEL"]["value"] == "DEBUG"
    assert env["EPHEM_HTTP_PORT"]["value"] == "3000"
    # No app token given: the Secret leaves the key out, so Ephem runs in HTTP mode.
    assert "SLACK_APP_TOKEN" not in secret["data"]


@needs_helm
def test_blueprint_is_mounted_where_ephem_config_points() -> None:
    docs = _render("--set", "blueprint.project=shop")
    config_map = _one(docs, "ConfigMap")
    blueprint = parse_blueprint(yaml.safe_load(config_map["data"]["ephem.yaml"]))
    assert blueprint.project == "shop"

    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_path = Path(_env(container)["EPHEM_CONFIG"]["value"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_path.name == "ephem.yaml"


@needs_helm
def test_changing_the_blueprint_or_secrets_restarts_the_pods() -> None:
    def annotations(*args: str) -> dict[str, str]:
        pod = _one(_render(*args), "Deployment")["spec"]["template"]
        result: dict[str, str] = pod["metadata"]["annotations"]
        return result

    base = annotations()
    new_blueprint = annotations("--set", "blueprint.project=other")
    new_secret = annotations("--set", "secrets.slackBotToken=xoxb-2")
    assert new_blueprint["checksum/config"] != base["checksum/config"]
    assert new_blueprint["checksum/secret"] == base["checksum/secret"]
    assert new_secret["checksum/secret"] != base["checksum/secret"]
    assert new_secret["checksum/config"] == base["checksum/config"]


@needs_helm
def test_migrations_run_in_an_init_container_without_slack_secrets() -> None:
    pod = _one(_render(), "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["ephem", "db", "upgrade"]
    env = _env(init)
    assert "EPHEM_DATABASE_URL" in env
    assert not {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "EPHEM_SECRET_KEY"} & set(env)

    pod = _one(_render("--set", "migrations.enabled=false"), "Deployment")["spec"]["template"]
    assert "initContainers" not in pod["spec"]


@needs_helm
def test_existing_secret_replaces_the_chart_secret() -> None:
    docs = _render("--set", "existingSecret=ephem-secrets")
    assert "Secret" not in _kinds(docs)
    pod = _one(docs, "Deployment")["spec"]["template"]
    assert "checksum/secret" not in pod["metadata"]["annotations"]
    for container in [*pod["spec"]["containers"], *pod["spec"]["initContainers"]]:
        refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
                if "valueFrom" in e]
        assert refs
        assert set(refs) == {"ephem-secrets"}


@needs_helm
def test_app_token_turns_on_socket_mode_in_the_secret() -> None:
    secret = _one(_render("--set", "secrets.slackAppToken=xapp-1"), "Secret")
    assert "SLACK_APP_TOKEN" in secret["data"]


@needs_helm
def test_optional_parts_render_when_enabled() -> None:
    docs = _render(
        "--set", "ingress.enabled=true",
        "--set", "serviceMonitor.enabled=true",
        "--set", "podDisruptionBudget.enabled=true",
        "--set", "rbac.create=true",
    )
    kinds = _kinds(docs)
    for kind in ["ClusterRole", "ClusterRoleBinding", "Ingress", "PodDisruptionBudget",
                 "ServiceMonitor"]:
        assert kind in kinds

    ingress = _one(docs, "Ingress")
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in paths] == ["/slack/events"]
    assert _one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["path"] == "/metrics"


@needs_helm
def test_rbac_is_bound_to_the_pods_account_with_no_wildcards() -> None:
    docs = _render("--set", "rbac.create=true")
    role = _one(docs, "ClusterRole")
    binding = _one(docs, "ClusterRoleBinding")
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "ephem"}]
    assert pod["automountServiceAccountToken"] is True
    for rule in role["rules"]:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
    verbs = {res: set(rule["verbs"]) for rule in role["rules"] for res in rule["resources"]}
    assert {"create", "delete"} <= verbs["namespaces"]
    assert "create" in verbs["deployments"]
    # The code phase: copies applied and deleted; rollouts, pods and logs read.
    for copied in ("deployments", "statefulsets", "services", "configmaps", "ingresses",
                   "httproutes"):
        assert {"list", "patch", "delete"} <= verbs[copied], copied
    assert verbs["cronjobs"] == {"list"} and verbs["pods/log"] == {"get"}

    # Without rbac the pods get no API token at all.
    pod = _one(_render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False


@needs_helm
def test_helm_itself_refuses_an_unknown_key() -> None:
    result = _helm("template", "rel", str(CHART), "--set", "ingress.enable=true")
    assert result.returncode != 0
    assert "enable" in result.stderr
