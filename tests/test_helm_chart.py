"""The Helm chart in helm/ephem: its values schema, and what it renders.

Why: the chart is how teams run Ephem; a typo in a values file must be refused at install, not
discovered as a pod that starts without its settings. The schema part needs only `jsonschema`;
the rendering part runs the real `helm` binary and is skipped, with the reason, when none is on
PATH.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

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


def _model_of(model: Any, *path: str) -> type[BaseModel] | None:
    """The pydantic model at `path` under `model` (through Optional and dict values), or None
    where the blueprint still types that part as a plain mapping."""
    current: Any = model
    for part in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        annotation = current.model_fields[part].annotation
        if get_origin(annotation) is dict:  # references: name → Reference
            current = get_args(annotation)[1]
            continue
        candidates = [a for a in (get_args(annotation) or (annotation,)) if a is not type(None)]
        current = candidates[0]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


@pytest.mark.parametrize(
    ("schema_path", "model_path"),
    [
        (("phases",), ("phases",)),
        (("phases", "infra"), ("phases", "infra")),
        (("phases", "infra", "kubernetes"), ("phases", "infra", "kubernetes")),
        (("phases", "code"), ("phases", "code")),
        (("phases", "code", "kubernetes"), ("phases", "code", "kubernetes")),
        (("references", "*"), ("references",)),
    ],
)
def test_schema_blueprint_parts_follow_their_models(
    schema: dict[str, Any], schema_path: tuple[str, ...], model_path: tuple[str, ...]
) -> None:
    model = _model_of(Blueprint, *model_path)
    if model is None:
        pytest.skip(f"the blueprint types {'.'.join(model_path)} as a plain mapping here")
    node = schema["properties"]["blueprint"]
    for part in schema_path:
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    # Every key Ephem accepts is one the schema accepts (it never refuses a valid blueprint).
    # The schema may know a key before this checkout's model does; Ephem refuses those at start.
    assert set(model.model_fields) <= set(node["properties"])


def test_default_blueprint_is_one_ephem_accepts(values: dict[str, Any]) -> None:
    blueprint = parse_blueprint(values["blueprint"], source="values.yaml blueprint")
    assert blueprint.version == 1


# --------------------------------------------------------------------------- rendering

needs_helm = pytest.mark.skipif(
    HELM is None,
    reason="no `helm` binary on PATH; the rendering tests need the real helm to run",
)

# The values a real install must give (or existingSecret instead).
REQUIRED = {
    "secrets.slackBotToken": "xoxb-1",
    "secrets.slackSigningSecret": "signing-1",
    "secrets.databaseUrl": "postgresql://ephem:pw@db:5432/ephem",
    "secrets.secretKey": "key-1",
}
SECRET_KEY_OF = {
    "secrets.slackBotToken": "SLACK_BOT_TOKEN",
    "secrets.slackSigningSecret": "SLACK_SIGNING_SECRET",
    "secrets.databaseUrl": "EPHEM_DATABASE_URL",
    "secrets.secretKey": "EPHEM_SECRET_KEY",
}


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def _sets(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set-string", f"{key}={value}")]


def _values_file(tmp: Path, values: dict[str, Any]) -> list[str]:
    path = tmp / f"values-{len(list(tmp.glob('values-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def _template(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return _helm("template", "rel", str(chart), "--namespace", "ephem", *args)


def _render(*args: str, chart: Path = CHART, required: bool = True) -> list[dict[str, Any]]:
    result = _template(*(_sets(REQUIRED) if required else []), *args, chart=chart)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    for doc in docs:  # every output is a Kubernetes object
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], doc
        assert isinstance(doc.get("kind"), str) and doc["kind"], doc
        assert isinstance(doc["metadata"]["name"], str) and doc["metadata"]["name"], doc
    return docs


def _kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind
             and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _hooks(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})]


def _release(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if "helm.sh/hook" not in d["metadata"].get("annotations", {})]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


# ----------------------------------------------------------------- required secrets, lint


@needs_helm
def test_default_install_fails_naming_the_missing_secret_key() -> None:
    result = _template()
    assert result.returncode != 0
    assert "secrets.slackBotToken is required" in result.stderr
    assert "SLACK_BOT_TOKEN" in result.stderr
    assert "Secret" in result.stderr and "existingSecret" in result.stderr


@needs_helm
@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_each_missing_secret_fails_with_its_key(missing: str) -> None:
    given = {k: v for k, v in REQUIRED.items() if k != missing}
    result = _template(*_sets(given))
    assert result.returncode != 0
    assert f"{missing} is required" in result.stderr
    assert SECRET_KEY_OF[missing] in result.stderr
    assert "pw@db" not in result.stderr  # given secrets are never echoed


@needs_helm
def test_socket_mode_needs_no_signing_secret() -> None:
    given = {k: v for k, v in REQUIRED.items() if k != "secrets.slackSigningSecret"}
    docs = _render(*_sets({**given, "secrets.slackAppToken": "xapp-1"}), required=False)
    data = _one(_release(docs), "Secret")["data"]
    assert set(data) == {"SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "EPHEM_DATABASE_URL",
                         "EPHEM_SECRET_KEY"}


@needs_helm
def test_existing_secret_needs_no_secret_values() -> None:
    docs = _render("--set", "existingSecret=ephem-secrets", required=False)
    assert "Secret" not in _kinds(docs)


@needs_helm
def test_helm_lint_passes_strict() -> None:
    result = _helm("lint", "--strict", str(CHART), *_sets(REQUIRED))
    assert result.returncode == 0, result.stdout + result.stderr
    result = _helm("lint", "--strict", str(CHART), *_sets(REQUIRED), *ALL_OPTIONS)
    assert result.returncode == 0, result.stdout + result.stderr
    # Without them, lint (which lets `required` pass, by design) still says what is missing.
    result = _helm("lint", "--strict", str(CHART))
    assert "secrets.slackBotToken is required" in result.stdout + result.stderr


# ----------------------------------------------------------------- what a default install is


@needs_helm
def test_required_values_render_the_minimal_set() -> None:
    docs = _render()
    assert _kinds(_release(docs)) == ["ConfigMap", "Deployment", "Secret", "Service",
                                      "ServiceAccount"]
    # The migration Job (and its database Secret) and the helm test pod are hooks.
    assert sorted((d["kind"], d["metadata"]["annotations"]["helm.sh/hook"])
                  for d in _hooks(docs)) == [
        ("Job", "pre-install,pre-upgrade"), ("Pod", "test"),
        ("Secret", "pre-install,pre-upgrade")]


@needs_helm
def test_deployment_runs_ephem_serve_with_probes_and_a_hardened_container() -> None:
    docs = _render()
    pod = _one(docs, "Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["ephem", "serve"]
    assert container["image"] == "ghcr.io/example/ephem:0.1.0"
    assert container["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the image's user
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/etc/ephem"}
    assert "initContainers" not in pod["spec"]
    # One replica: no PodDisruptionBudget (it would block drains), no spread.
    assert "PodDisruptionBudget" not in _kinds(docs)
    assert "topologySpreadConstraints" not in pod["spec"]

    service = _one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == _one(docs, "Deployment")["spec"]["selector"][
        "matchLabels"]


@needs_helm
def test_image_digest_pins_the_image_everywhere() -> None:
    digest = "sha256:" + "ab" * 32
    docs = _render("--set", f"image.digest={digest}", "--set", "image.tag=9.9.9")
    images = [c["image"] for d in docs if d["kind"] in ("Deployment", "Job", "Pod")
              for c in (d["spec"]["template"]["spec"] if d["kind"] != "Pod" else d["spec"])
              ["containers"]]
    assert len(images) == 3
    assert set(images) == {f"ghcr.io/example/ephem@{digest}"}
    assert _template(*_sets(REQUIRED), "--set", "image.digest=latest").returncode != 0


@needs_helm
def test_settings_become_env_from_secret_and_values() -> None:
    docs = _render("--set", "settings.workers=7", "--set", "settings.logLevel=DEBUG")
    secret = _one(_release(docs), "Secret")
    (container,) = _pod(docs)["containers"]
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

    pod = _pod(docs)
    (container,) = pod["containers"]
    config_path = Path(_env(container)["EPHEM_CONFIG"]["value"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    sources = volume["projected"]["sources"]
    assert [s["configMap"]["name"] for s in sources] == [config_map["metadata"]["name"]]
    assert config_path.name == "ephem.yaml"


@needs_helm
def test_changing_the_blueprint_or_secrets_restarts_the_pods() -> None:
    def annotations(*args: str) -> dict[str, str]:
        pod = _one(_render(*args), "Deployment")["spec"]["template"]
        result: dict[str, str] = pod["metadata"]["annotations"]
        return result

    base = annotations()
    new_blueprint = annotations("--set", "blueprint.project=other")
    new_secret = annotations("--set-string", "secrets.slackBotToken=xoxb-2")
    assert new_blueprint["checksum/config"] != base["checksum/config"]
    assert new_blueprint["checksum/secret"] == base["checksum/secret"]
    assert new_secret["checksum/secret"] != base["checksum/secret"]
    assert new_secret["checksum/config"] == base["checksum/config"]


# ----------------------------------------------------------------- hooks: migrations, helm test


@needs_helm
def test_migrations_run_as_a_pre_install_hook_job_with_only_the_database_url() -> None:
    docs = _render()
    job = _one(docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    hook_secret = _one(_hooks(docs), "Secret")
    # The Secret the Job reads exists before it (a lower hook weight), holding only the URL.
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        annotations["helm.sh/hook-weight"])
    assert set(hook_secret["data"]) == {"EPHEM_DATABASE_URL"}
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["ephem", "db", "upgrade"]
    env = _env(container)
    assert env["EPHEM_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == hook_secret[
        "metadata"]["name"]
    assert not {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "EPHEM_SECRET_KEY"} & set(env)
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Not one of the Service's pods.
    selector = _one(docs, "Service")["spec"]["selector"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= labels.items()

    docs = _render("--set", "migrations.enabled=false")
    assert "Job" not in _kinds(docs)
    assert [d["kind"] for d in _hooks(docs)] == ["Pod"]


@needs_helm
def test_migration_job_reads_an_existing_secret_directly() -> None:
    docs = _render("--set", "existingSecret=ephem-secrets", required=False)
    assert "Secret" not in _kinds(docs)
    (container,) = _one(docs, "Job")["spec"]["template"]["spec"]["containers"]
    assert _env(container)["EPHEM_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == (
        "ephem-secrets")


@needs_helm
def test_helm_test_runs_ephem_doctor_with_the_release_settings() -> None:
    docs = _render()
    pod = _one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["ephem", "doctor"]
    (serve,) = _pod(docs)["containers"]
    assert _env(container) == _env(serve)
    assert container["volumeMounts"] == serve["volumeMounts"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "Pod" not in _kinds(_render("--set", "tests.enabled=false"))


@needs_helm
def test_existing_secret_replaces_the_chart_secret() -> None:
    docs = _render("--set", "existingSecret=ephem-secrets")
    assert "Secret" not in _kinds(docs)
    pod = _one(docs, "Deployment")["spec"]["template"]
    assert "checksum/secret" not in pod["metadata"]["annotations"]
    for container in pod["spec"]["containers"]:
        refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
                if "valueFrom" in e]
        assert refs
        assert set(refs) == {"ephem-secrets"}


# ----------------------------------------------------------------- replicas


@needs_helm
def test_replicas_get_a_disruption_budget_and_a_topology_spread() -> None:
    docs = _render("--set", "replicaCount=3")
    selector = _one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    spread = _pod(docs)["topologySpreadConstraints"]
    assert [(c["topologyKey"], c["whenUnsatisfiable"], c["maxSkew"]) for c in spread] == [
        ("kubernetes.io/hostname", "ScheduleAnyway", 1),
        ("topology.kubernetes.io/zone", "ScheduleAnyway", 1)]
    assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)

    pdb = _one(_render("--set", "replicaCount=3", "--set", "podDisruptionBudget.maxUnavailable=1"),
               "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert "PodDisruptionBudget" not in _kinds(
        _render("--set", "replicaCount=3", "--set", "podDisruptionBudget.enabled=false"))


# ----------------------------------------------------------------- the blueprint's files


@pytest.fixture
def chart_with_files(tmp_path: Path) -> Path:
    """A copy of the chart with a blueprint's files under files/, as an operator ships them."""
    chart = tmp_path / "ephem"
    shutil.copytree(CHART, chart)
    (chart / "files" / "migrations").mkdir(parents=True)
    (chart / "files" / "migrations" / "V1__init.sql").write_text("CREATE TABLE t (id int);\n")
    (chart / "files" / "masking.yaml").write_text("tables: {}\n")
    return chart


@needs_helm
def test_blueprint_files_ship_in_a_configmap_beside_ephem_yaml(chart_with_files: Path) -> None:
    docs = _render(chart=chart_with_files)
    files = _one(docs, "ConfigMap", "rel-ephem-files")
    volume = next(v for v in _pod(docs)["volumes"] if v["name"] == "config")
    sources = volume["projected"]["sources"]
    assert sources[0]["configMap"]["name"] == "rel-ephem"
    items = {i["path"]: files["data"][i["key"]] for i in sources[1]["configMap"]["items"]}
    assert items == {"masking.yaml": "tables: {}\n",
                     "migrations/V1__init.sql": "CREATE TABLE t (id int);\n"}
    # Changing a file rolls the pods.
    (chart_with_files / "files" / "masking.yaml").write_text("tables: {a: {}}\n")
    after = _one(_render(chart=chart_with_files), "Deployment")["spec"]["template"]
    assert after["metadata"]["annotations"]["checksum/config"] != _one(
        docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


@needs_helm
def test_blueprint_files_from_an_image_are_copied_by_an_init_container() -> None:
    docs = _render("--set", "blueprintImage.repository=registry.example/shop-blueprint",
                   "--set-string", "blueprintImage.tag=42")
    pod = _pod(docs)
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example/shop-blueprint:42"
    assert init["command"] == ["cp", "-R", "/project/.", "/srv/ephem/project"]
    (serve,) = pod["containers"]
    mount = next(m for m in serve["volumeMounts"] if m["mountPath"] == "/srv/ephem/project")
    assert mount["readOnly"] is True
    assert next(v for v in pod["volumes"] if v["name"] == mount["name"])["emptyDir"] == {}
    result = _template(*_sets(REQUIRED), "--set", "blueprintImage.repository=x")
    assert result.returncode != 0 and "blueprintImage.tag" in result.stderr


# ----------------------------------------------------------------- RBAC follows the blueprint

INFRA = {"kubernetes": {"in_cluster": True, "namespace": "preview-{name}"}}
CODE = {"deployer": "kubernetes",
        "kubernetes": {"in_cluster": True, "source_namespace": "staging",
                       "secrets": ["stripe", "api-keys"]}}
REFERENCES = {"staging": {"source": {"kind": "cluster", "namespace": "staging",
                                     "in_cluster": True}},
              "prod": {"source": {"kind": "cluster", "namespace": "shop-prod",
                                  "in_cluster": True}},
              "fixed": {"releases": {"api": "1.2.3"}}}


def _rule(groups: list[str], resources: list[str], verbs: list[str],
          names: list[str] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"apiGroups": groups, "resources": resources, "verbs": verbs}
    if names is not None:
        rule["resourceNames"] = names
    return rule


RW = ["get", "list", "create", "patch", "delete"]
NAMESPACE_RULES = [
    _rule([""], ["namespaces"], RW),
    _rule([""], ["resourcequotas", "limitranges"], ["get", "create", "patch"]),
    _rule(["networking.k8s.io"], ["networkpolicies"], ["get", "create", "patch"]),
]
DEPLOYER_RULES = [
    _rule(["apps"], ["deployments", "statefulsets"], RW),
    _rule([""], ["services", "configmaps"], RW),
    _rule(["networking.k8s.io"], ["ingresses"], RW),
    _rule(["gateway.networking.k8s.io"], ["httproutes"], RW),
    _rule([""], ["secrets"], ["create", "patch", "delete"]),
    _rule([""], ["pods"], ["get", "list"]),
    _rule([""], ["pods/log"], ["get"]),
    _rule([""], ["events"], ["list"]),
]
DEPLOY_SOURCE_RULES = [
    _rule(["apps"], ["deployments", "statefulsets"], ["get", "list"]),
    _rule([""], ["services", "configmaps"], ["get", "list"]),
    _rule(["networking.k8s.io"], ["ingresses"], ["get", "list"]),
    _rule(["gateway.networking.k8s.io"], ["httproutes"], ["get", "list"]),
    _rule([""], ["secrets"], ["get"], names=["api-keys", "stripe"]),
]
RELEASE_SOURCE_RULES = [
    _rule(["apps"], ["deployments", "statefulsets"], ["get", "list"]),
    _rule(["batch"], ["cronjobs"], ["get", "list"]),
]


def _grants(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(kind, namespace or "", name) → rules, for every role bound to the pods' account."""
    account = _pod(docs)["serviceAccountName"]
    roles = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d["rules"]
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    grants: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for binding in docs:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "ephem"}]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace", "") if ref["kind"] == "Role" else ""
        key = (ref["kind"], namespace, ref["name"])
        assert key in roles, f"{binding['metadata']['name']} binds a role that is not rendered"
        grants[key] = roles.pop(key)
    assert roles == {}, f"roles bound to nobody: {sorted(roles)}"
    return grants


COMBINATIONS: dict[str, tuple[dict[str, Any], dict[tuple[str, str, str], list[Any]]]] = {
    "none": ({}, {}),
    "infra only": ({"infra": INFRA}, {
        ("ClusterRole", "", "ephem-rel-ephem-namespaces"): NAMESPACE_RULES}),
    "code only": ({"code": CODE}, {
        ("ClusterRole", "", "ephem-rel-ephem-deployer"): DEPLOYER_RULES,
        ("Role", "staging", "rel-ephem-deploy-source"): DEPLOY_SOURCE_RULES}),
    "both": ({"infra": INFRA, "code": CODE}, {
        ("ClusterRole", "", "ephem-rel-ephem-namespaces"): NAMESPACE_RULES,
        ("ClusterRole", "", "ephem-rel-ephem-deployer"): DEPLOYER_RULES,
        ("Role", "staging", "rel-ephem-deploy-source"): DEPLOY_SOURCE_RULES}),
}


@needs_helm
@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_rbac_is_exactly_what_the_blueprint_needs(tmp_path: Path, combination: str) -> None:
    phases, expected = COMBINATIONS[combination]
    docs = _render(*_values_file(tmp_path, {"blueprint": {"phases": phases}}))
    assert _grants(docs) == expected
    # The API token is mounted only when something is granted.
    assert _pod(docs)["automountServiceAccountToken"] is bool(expected)
    assert _one(docs, "ServiceAccount")["automountServiceAccountToken"] is bool(expected)
    for rules in expected.values():
        for rule in rules:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    # The blueprint the pods read is the one the rights were computed from.
    mounted = parse_blueprint(yaml.safe_load(_one(docs, "ConfigMap")["data"]["ephem.yaml"]))
    assert (mounted.phases.infra is not None) == ("infra" in phases)
    assert (mounted.phases.code is not None) == ("code" in phases)


@needs_helm
def test_cluster_release_sources_get_reads_in_their_namespaces_only(tmp_path: Path) -> None:
    docs = _render(*_values_file(tmp_path, {"blueprint": {"references": REFERENCES}}))
    assert _grants(docs) == {
        ("Role", "shop-prod", "rel-ephem-release-source"): RELEASE_SOURCE_RULES,
        ("Role", "staging", "rel-ephem-release-source"): RELEASE_SOURCE_RULES}
    assert not [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]


@needs_helm
def test_a_local_deployer_needs_no_kubernetes_rights(tmp_path: Path) -> None:
    local = {"deployer": "local", "local": {"components": {"api": {"command": ["true"]}}}}
    docs = _render(*_values_file(tmp_path, {"blueprint": {"phases": {"code": local}}}))
    assert _grants(docs) == {}
    assert _pod(docs)["automountServiceAccountToken"] is False


@needs_helm
def test_rbac_create_false_grants_nothing(tmp_path: Path) -> None:
    docs = _render("--set", "rbac.create=false", *_values_file(
        tmp_path, {"blueprint": {"phases": {"infra": INFRA, "code": CODE},
                                 "references": REFERENCES}}))
    assert not [d for d in docs if "Role" in d["kind"] or "Admission" in d["kind"]]


@needs_helm
def test_extra_rules_get_a_cluster_role_of_their_own(tmp_path: Path) -> None:
    extra = [_rule(["batch"], ["jobs"], ["get"])]
    docs = _render(*_values_file(tmp_path, {"rbac": {"extraRules": extra}}))
    assert _grants(docs) == {("ClusterRole", "", "ephem-rel-ephem-extra"): extra}


@needs_helm
@pytest.mark.parametrize("phases", [{"infra": INFRA}, {"code": CODE}])
def test_writes_outside_the_environments_namespaces_are_refused_by_admission(
    tmp_path: Path, phases: dict[str, Any]
) -> None:
    docs = _render(*_values_file(tmp_path, {"blueprint": {"phases": phases}}))
    policy = _one(docs, "ValidatingAdmissionPolicy")
    binding = _one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"],
                               "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rules,) = spec["matchConstraints"]["resourceRules"]
    assert rules["operations"] == ["CREATE", "UPDATE", "DELETE"]
    # Every resource either ClusterRole may write is covered.
    written = {res for rule in NAMESPACE_RULES + DEPLOYER_RULES
               if set(rule["verbs"]) & {"create", "patch", "delete"}
               for res in rule["resources"]}
    assert written <= set(rules["resources"])
    assert {g for rule in NAMESPACE_RULES + DEPLOYER_RULES for g in rule["apiGroups"]} <= set(
        rules["apiGroups"])
    (condition,) = spec["matchConditions"]
    assert condition["expression"] == (
        'request.userInfo.username == "system:serviceaccount:ephem:rel-ephem"')
    (validation,) = spec["validations"]
    regex = re.search(r"\.matches\(r'([^']+)'\)", validation["expression"])
    assert regex is not None
    # The pattern: preview-{name} with infra; the default ephem-{name} when only code is on.
    prefix = "preview-" if "infra" in phases else "ephem-"
    pattern = re.compile(regex.group(1))
    assert pattern.fullmatch(f"{prefix}alice-test")
    assert pattern.fullmatch(f"{prefix}a1")
    for other in ["kube-system", "default", "staging", prefix, f"{prefix}-x", f"x{prefix}a",
                  f"{prefix}a.b"]:
        assert not pattern.fullmatch(other), other
    docs = _render("--set", "rbac.admissionPolicy.enabled=false",
                   *_values_file(tmp_path, {"blueprint": {"phases": phases}}))
    assert not [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]


@needs_helm
@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("phases", "infra", "kubernetes", "namespace"), "preview"),  # no {name}
        (("phases", "code", "deployer"), "k8s"),
        (("phases", "code", "kubernetes", "source_namespace"), "Staging"),
        (("references", "staging", "source", "kind"), "cluster"),  # cluster without namespace
    ],
)
def test_helm_refuses_a_blueprint_the_schema_can_tell_is_wrong(
    tmp_path: Path, path: tuple[str, ...], value: str
) -> None:
    blueprint: dict[str, Any] = {}
    node = blueprint
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    result = _template(*_sets(REQUIRED), *_values_file(tmp_path, {"blueprint": blueprint}))
    assert result.returncode != 0
    assert "/blueprint/" + "/".join(path[:-1]) in result.stderr


# ----------------------------------------------------------------- every option, metrics

ALL_OPTIONS = [
    "--set", "ingress.enabled=true",
    "--set", "serviceMonitor.enabled=true",
    "--set", "prometheusRule.enabled=true",
    "--set", "dashboard.enabled=true",
    "--set", "replicaCount=3",
    "--set", "image.digest=sha256:" + "cd" * 32,
    "--set", "blueprintImage.repository=registry.example/blueprint",
    "--set", "blueprintImage.tag=v1",
    "--set", "rbac.extraRules[0].apiGroups[0]=batch",
    "--set", "rbac.extraRules[0].resources[0]=jobs",
    "--set", "rbac.extraRules[0].verbs[0]=get",
]


@needs_helm
def test_every_option_on_renders_kubernetes_objects(tmp_path: Path) -> None:
    docs = _render(*ALL_OPTIONS, *_values_file(tmp_path, {"blueprint": {
        "phases": {"infra": INFRA, "code": CODE}, "references": REFERENCES}}))
    kinds = set(_kinds(docs))
    assert kinds >= {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Ingress",
                     "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "Job",
                     "Pod", "Deployment", "Service", "ServiceAccount", "Secret", "ConfigMap"}
    ingress = _one(docs, "Ingress")
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in paths] == ["/slack/events"]
    assert _one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["path"] == "/metrics"
    names = [(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
             for d in docs]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


# Metrics the alerts and the dashboard read that Ephem does not export yet.
PENDING_METRICS: set[str] = set()


def _exported() -> set[str]:
    from bot.metrics import REGISTRY

    names: set[str] = set()
    for family in REGISTRY.collect():
        # A family's series: the name itself, or with the suffixes of its type.
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "gauge": [""]}.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bephem_[a-z_]+\b", text))


def test_dashboard_reads_only_metrics_that_exist_or_are_named_as_pending() -> None:
    dashboard = json.loads((CHART / "dashboards" / "ephem.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    used = _metric_names(exprs)
    assert used - _exported() <= PENDING_METRICS, used - _exported()
    assert used & _exported(), "the dashboard shows none of today's metrics"
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


@needs_helm
def test_alert_rules_cover_the_four_conditions_and_are_off_by_default() -> None:
    assert "PrometheusRule" not in _kinds(_render())
    assert "ConfigMap" in _kinds(_render("--set", "dashboard.enabled=true"))
    rule = _one(_render("--set", "prometheusRule.enabled=true"), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) >= {"EphemJobStuck", "EphemQueueGrowing", "EphemSnapshotStale",
                           "EphemReaperFailing"}
    used = _metric_names(" ".join(r["expr"] for r in alerts.values()))
    assert used - _exported() <= PENDING_METRICS, used - _exported()
    assert "45 minutes" in alerts["EphemJobStuck"]["annotations"]["summary"]
    assert "2700" in alerts["EphemJobStuck"]["expr"]
    stale = " ".join(alerts["EphemSnapshotStale"]["expr"].split())
    assert "ephem_snapshot_age_seconds" in stale and "> on (snapshot)" in stale
    assert "ephem_snapshot_schedule_seconds" in stale.split("> on (snapshot)")[1]


@needs_helm
def test_helm_itself_refuses_an_unknown_key() -> None:
    result = _helm("template", "rel", str(CHART), "--set", "ingress.enable=true")
    assert result.returncode != 0
    assert "enable" in result.stderr
