"""The example deployment in deploy/ (docs/deploy.md) holds together: every file parses, the compose
file has the services with their commands and health checks, the settings it passes are the ones the
code reads (a renamed setting fails here), nginx streams upload bodies, the Helm values use keys the
Dagster chart knows, the GPU tag has the dagster-k8s/config form, and the Dagster instance configs
load with Dagster's own config schema. The heavy stages carry their pools.

Validated for real here: YAML/JSON syntax, Dagster instance config (dagster's schema and, where the
class is installed, the class's own config schema), nginx when installed (`nginx -t`, and the config
run in front of two stand-in replicas: upload bodies arrive while still being sent), Dagster's CLI
for pool limits, the compose migrate step (migrate.sh) on PostgreSQL and SeaweedFS. Validated for
shape only (the package or tool is not installed here): the Helm values (no `helm template`; keys
checked against the chart's schema, helm/dagster/schema in the Dagster repository), the
dagster-k8s/config tag (dagster-k8s' USER_DEFINED_K8S_JOB_CONFIG_SCHEMA rebuilt below),
S3ComputeLogManager's config (dagster-aws 0.29.27's config_type keys, rebuilt below), the compose file
(keys of the Compose Specification; no `docker compose config`) and the Dockerfile."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
HELM_DIR = DEPLOY / "helm"
BIN = Path(sys.executable).parent
CODE_DIRS = ("resources", "upload_api", "sensors", "dubbing_assets")


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes)


def deploy_instance_configs() -> list[Path]:
    """Every Dagster instance config in deploy/ (compose's, and the Celery profile's once it is there)."""
    return [p for p in deploy_files(".yaml") if p.name == "dagster.yaml"]


# --- settings: what the code reads ------------------------------------------------------------------

# os.environ.get("X"), os.environ["X"], getenv("X"), env("X"), env.get("X"), and the settings helpers
_READ = re.compile(r"""(?:environ(?:\.get)?|getenv|\benv(?:\.get)?|env_or|env_float|\bflag|\bnumber)"""
                   r"""\(\s*["']([A-Z][A-Z0-9_]+)["']""")
_INDEX = re.compile(r"""environ\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\]""")
# read by libraries the platform uses, not by its own code
THIRD_PARTY = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
POSTGRES_IMAGE = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}


def names_read_by_code() -> set[str]:
    names: set[str] = set()
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            names.update(_READ.findall(text))
            names.update(_INDEX.findall(text))
    return names


def env_refs(node) -> set[str]:
    """The variables a Dagster YAML reads ({env: NAME})."""
    found: set[str] = set()
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            found.add(node["env"])
        for value in node.values():
            found |= env_refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= env_refs(value)
    return found


def names_read_by_instance_configs() -> set[str]:
    found: set[str] = set()
    for path in [ROOT / "dagster.yaml", *deploy_instance_configs()]:
        found |= env_refs(load_yaml(path))
    return found


def known_settings() -> set[str]:
    return names_read_by_code() | names_read_by_instance_configs() | THIRD_PARTY


def unknown(names) -> list[str]:
    known = known_settings()
    return sorted(n for n in names if n not in known)


def test_the_settings_scan_finds_the_real_settings_and_would_catch_a_renamed_one():
    code = names_read_by_code()
    for name in ("DATABASE_URL", "DAGSTER_HOME", "DUBBING_DATA_DIR", "DUBBING_STORAGE", "DUBBING_S3_BUCKET",
                 "DUBBING_S3_ENDPOINT_URL", "DUBBING_S3_REGION", "DUBBING_S3_PREFIX", "DUBBING_S3_PATH_STYLE",
                 "UPLOAD_CHUNK_BYTES", "UPLOAD_LOCK_WAIT_S", "MAX_UPLOAD_MB", "COOKIE_SECURE", "NTFY_URL",
                 "NTFY_AUTH", "PUBLIC_BASE_URL", "ASR_DEVICE", "XTTS_DEVICE"):
        assert name in code, f"{name} is no longer read by the code: update deploy/ and docs/deploy.md"
    assert "DAGSTER_POSTGRES_URL" in names_read_by_instance_configs()
    assert unknown(["DUBBING_S3_BUCKETS", "DUBBING_S3_BUCKET"]) == ["DUBBING_S3_BUCKETS"]


# --- every file parses ------------------------------------------------------------------------------

def test_every_yaml_and_json_file_in_deploy_parses():
    files = deploy_files(".yaml", ".yml", ".json")
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "compose/compose.yaml", "compose/dagster.yaml", "compose/workspace.yaml", "helm/values.yaml",
        "helm/values-gpu.yaml", "helm/gpu-tag.json"}
    for path in files:
        data = json.loads(path.read_text()) if path.suffix == ".json" else load_yaml(path)
        assert isinstance(data, dict) and data, path


# --- compose -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_DIR / "compose.yaml")


def command(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd if isinstance(cmd, list) else cmd.split()


# keys of the Compose Specification's JSON schema (compose-spec/compose-spec, schema/compose-spec.json)
# that a service here may use; the schema forbids unknown keys
COMPOSE_SERVICE_KEYS = {"image", "build", "command", "entrypoint", "environment", "env_file", "volumes", "ports",
                        "expose", "depends_on", "healthcheck", "restart", "deploy", "gpus", "networks", "user",
                        "working_dir", "stop_grace_period", "stop_signal", "logging", "labels", "init"}
COMPOSE_HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
COMPOSE_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def test_compose_has_every_service_with_an_image_a_command_and_a_health_check(compose):
    assert set(compose) - {"name", "services", "volumes", "networks", "secrets", "configs"} == \
        {k for k in compose if k.startswith("x-")}
    services = compose["services"]
    for name, svc in services.items():
        assert set(svc) <= COMPOSE_SERVICE_KEYS, (name, set(svc) - COMPOSE_SERVICE_KEYS)
        assert set(svc.get("healthcheck", {})) <= COMPOSE_HEALTHCHECK_KEYS, name
        assert all(isinstance(v, str) for v in (svc.get("environment") or {}).values()), name
        assert {d["condition"] for d in (svc.get("depends_on") or {}).values()} <= COMPOSE_CONDITIONS, name
    assert set(services) >= {"postgres", "seaweedfs", "migrate", "api1", "api2", "proxy", "codeserver", "daemon",
                             "webserver"}
    for name, svc in services.items():
        assert svc.get("image"), f"{name}: no image"
        if name != "migrate":  # a one-shot step: the others wait for it to complete
            assert svc.get("healthcheck", {}).get("test"), f"{name}: no health check"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy: it has no check"
    app = [n for n, s in services.items() if s["image"].startswith("dubbing-platform")]
    assert set(app) == {"migrate", "api1", "api2", "codeserver", "daemon", "webserver"}
    build = services["api1"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    # every mounted file is in deploy/compose
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (COMPOSE_DIR / source).is_file(), f"{name} mounts missing {source}"


def test_compose_commands_start_the_platform_as_the_gates_do(compose):
    services = compose["services"]
    for api in ("api1", "api2"):
        cmd = command(services[api])
        assert cmd[:2] == ["uvicorn", "upload_api.app:app"] and "--proxy-headers" in cmd
        assert services[api]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    code = command(services["codeserver"])
    assert code[:3] == ["dagster", "code-server", "start"]
    assert code[code.index("-m") + 1] == "dubbing_assets.definitions"
    port = int(code[code.index("-p") + 1])
    location = code[code.index("--location-name") + 1]
    # the daemon and webserver load the code server through the workspace mounted into them
    workspace = load_yaml(COMPOSE_DIR / "workspace.yaml")["load_from"][0]["grpc_server"]
    assert (workspace["host"], workspace["port"], workspace["location_name"]) == ("codeserver", port, location)
    # one location name everywhere: runs remember it, and the API's own workspace re-executes by it
    root_workspace = load_yaml(ROOT / "workspace.yaml")["load_from"][0]["python_module"]
    assert location == root_workspace["location_name"] == load_yaml(HELM_DIR / "values.yaml")[
        "dagster-user-deployments"]["deployments"][0]["name"]
    for name, binary in (("daemon", "dagster-daemon"), ("webserver", "dagster-webserver")):
        cmd = command(services[name])
        assert cmd[0] == binary
        mounted = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounted[cmd[cmd.index("-w") + 1]] == "./workspace.yaml"
    migrate = command(services["migrate"])
    assert migrate[0] == "sh" and migrate[1].endswith("deploy/compose/migrate.sh")
    script = (COMPOSE_DIR / "migrate.sh").read_text()
    assert "dagster instance migrate" in script and "dubbing init" in script
    subprocess.run(["sh", "-n", str(COMPOSE_DIR / "migrate.sh")], check=True)
    # every app process reads the same instance config
    for name in ("migrate", "api1", "codeserver", "daemon", "webserver"):
        volumes = services[name].get("volumes", [])
        assert "./dagster.yaml:/opt/dagster/dagster_home/dagster.yaml:ro" in volumes, name
        assert services[name]["environment"]["DAGSTER_HOME"] == "/opt/dagster/dagster_home"


def test_compose_passes_only_settings_the_code_reads(compose):
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        names = set(env) - (POSTGRES_IMAGE if name == "postgres" else set())
        assert not unknown(names), f"{name} sets variables nothing reads: {unknown(names)}"
    env = compose["services"]["api1"]["environment"]
    assert env["DUBBING_STORAGE"] == "s3"  # several machines: files in S3, never one machine's disk
    for name in ("DUBBING_S3_BUCKET", "DUBBING_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name], name
    for name in ("DATABASE_URL", "DAGSTER_POSTGRES_URL"):
        assert env[name].startswith("postgresql+psycopg2://"), name  # not psycopg 3 (platform facts)


# --- nginx -------------------------------------------------------------------------------------------

NGINX = COMPOSE_DIR / "nginx.conf"


def nginx_locations(text: str) -> dict[str, str]:
    """location pattern -> body (the config has no nested blocks inside locations)."""
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"location\s+([^{]+)\{([^}]*)\}", text)}


def size_bytes(value: str) -> float:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert m, value
    n = int(m.group(1))
    return float("inf") if n == 0 else n * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


def directive(body: str, name: str) -> str | None:
    m = re.search(rf"^\s*{name}\s+([^;]+);", body, re.M)
    return m.group(1).strip() if m else None


def test_nginx_streams_upload_bodies_and_lets_a_chunk_through(compose, monkeypatch):
    from resources.uploads import UploadStore

    monkeypatch.delenv("UPLOAD_CHUNK_BYTES", raising=False)
    # the chunk size compose sets, and the code's default (should a deployment drop the setting)
    chunk = max(int(compose["services"]["api1"]["environment"]["UPLOAD_CHUNK_BYTES"]), UploadStore.chunk_size())
    text = NGINX.read_text()
    locations = nginx_locations(text)
    uploads = {pattern: body for pattern, body in locations.items()
               if re.search(r"/api/(uploads|tus)", pattern) and directive(body, "proxy_request_buffering")}
    chunk_route = next(p for p in uploads if p.startswith("~"))
    regex = chunk_route.lstrip("~").strip()
    assert re.match(regex, "/api/uploads/u0123abc/chunk") and not re.match(regex, "/api/uploads/init")
    assert "/api/tus/" in uploads
    for pattern, body in uploads.items():
        assert directive(body, "proxy_request_buffering") == "off", pattern
        assert size_bytes(directive(body, "client_max_body_size")) >= chunk, pattern
    # the server-wide limit is small; the upload routes are the exceptions
    assert size_bytes(directive(text.split("server {", 1)[1], "client_max_body_size")) < chunk
    # a job's live log is not buffered
    stream = next(body for pattern, body in locations.items() if "logs/stream" in pattern)
    assert directive(stream, "proxy_buffering") == "off"
    # the upstreams are the compose API replicas
    servers = set(re.findall(r"^\s*server\s+([\w.-]+):(\d+)", text, re.M))
    assert {host for host, _ in servers} == {"api1", "api2"}
    assert "X-Forwarded-For $remote_addr" in text  # replaced, not appended: the login limit's address


def nginx_binary() -> str:
    """nginx, which `make test` installs (scripts/setup_system.sh --test); missing under CI=true is a failure."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found:
        return found
    reason = "nginx is not installed (apt-get install nginx-light, or run make test, which installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI=true: the nginx tests must run)")
    pytest.skip(reason)


def test_nginx_accepts_the_config():
    nginx = nginx_binary()
    work = Path(os.environ["DUBBING_DATA_DIR"]).parent / "nginx-t"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    # nginx -t resolves upstream host names: the compose service names exist only inside compose
    conf = re.sub(r"\bapi([12]):8000\b", r"127.0.0.1:800\1", NGINX.read_text())
    (work / "nginx.conf").write_text(conf)
    out = subprocess.run([nginx, "-t", "-p", str(work), "-c", str(work / "nginx.conf"),
                          "-g", f"pid {work / 'nginx.pid'};"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --- Helm values (keys from the Dagster chart's schema: helm/dagster/schema/schema/charts) ----------------

CHART_TOP = {"global", "nameOverride", "fullnameOverride", "rbacEnabled", "dagsterWebserver",
             "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
             "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
             "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate",
             "telemetry", "serviceAccount", "retention", "additionalInstanceConfig", "concurrency"}
USER_DEPLOYMENT = {"name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns", "port",
                   "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity", "tolerations",
                   "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe",
                   "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName"}
K8S_RUN_LAUNCHER = {"image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
                    "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
                    "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig"}
RUN_K8S_CONFIG = {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata"}
HELM_S3_LOGS = {"bucket": "bucket", "localDir": "local_dir", "prefix": "prefix", "useSsl": "use_ssl",
                "verify": "verify", "verifyCertPath": "verify_cert_path", "endpointUrl": "endpoint_url",
                "skipEmptyFiles": "skip_empty_files", "uploadInterval": "upload_interval",
                "uploadExtraArgs": "upload_extra_args", "showUrlOnly": "show_url_only", "region": "region"}
DAEMON = {"enabled", "image", "runCoordinator", "heartbeatTolerance", "env", "envConfigMaps", "envSecrets",
          "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
          "securityContext", "resources", "checkDbReadyInitContainer", "livenessProbe", "readinessProbe",
          "startupProbe", "annotations", "runMonitoring", "runRetries", "sensors", "schedules", "backfills",
          "schedulerName", "logFormat", "volumeMounts", "volumes", "initContainerResources", "extraContainers",
          "extraPrependedInitContainers"}
QUEUED_COORDINATOR = {"maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers",
                      "dequeueUseThreads", "blockOpConcurrencyLimitedRuns"}
RUN_MONITORING = {"enabled", "startTimeoutSeconds", "cancelTimeoutSeconds", "maxResumeRunAttempts",
                  "pollIntervalSeconds", "freeSlotsAfterRunEndSeconds"}
CONCURRENCY = {"enabled": None, "pools": {"defaultLimit", "granularity", "opGranularityRunBuffer"},
               "runs": {"maxConcurrentRuns", "tagConcurrencyLimits"}}


@pytest.fixture(scope="module")
def helm() -> dict:
    return load_yaml(HELM_DIR / "values.yaml")


def test_helm_values_use_the_chart_keys_for_this_code_location(helm):
    assert set(helm) <= CHART_TOP, set(helm) - CHART_TOP
    users = helm["dagster-user-deployments"]
    assert users["enabled"] is True and users["enableSubchart"] is True
    deployment = users["deployments"][0]
    assert set(deployment) <= USER_DEPLOYMENT, set(deployment) - USER_DEPLOYMENT
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "dubbing_assets.definitions"]  # dagster api grpc -m ...
    assert deployment["image"]["repository"] and deployment["image"]["tag"]
    assert isinstance(deployment["port"], int)
    # external PostgreSQL, password from the chart's secret (key postgresql-password)
    pg = helm["postgresql"]
    assert pg["enabled"] is False and pg["postgresqlHost"] and pg["postgresqlDatabase"]
    assert helm["generatePostgresqlPasswordSecret"] is False and helm["global"]["postgresqlSecretName"]
    # K8sRunLauncher
    launcher = helm["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert set(k8s) <= K8S_RUN_LAUNCHER, set(k8s) - K8S_RUN_LAUNCHER
    assert set(k8s["runK8sConfig"]) <= RUN_K8S_CONFIG
    # every Dagster process and every run gets the platform's settings from the same secret
    secrets = {s["name"] for s in k8s["envSecrets"]}
    for part in (helm["dagsterWebserver"], helm["dagsterDaemon"], deployment):
        assert {s["name"] for s in part["envSecrets"]} == secrets
    # the settings the comment says go into that secret are real
    listed = set(re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", (HELM_DIR / "values.yaml").read_text()))
    assert not unknown(listed), unknown(listed)


def test_helm_values_keep_the_instance_policies_and_s3_compute_logs(helm):
    logs = helm["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager" and set(logs["config"]) == {"s3ComputeLogManager"}
    s3 = logs["config"]["s3ComputeLogManager"]
    assert set(s3) <= set(HELM_S3_LOGS) and s3["bucket"]
    # the chart writes them as S3ComputeLogManager's config: those must be its keys
    assert validate_config(S3_COMPUTE_LOGS_SCHEMA, {HELM_S3_LOGS[k]: v for k, v in s3.items()}).success
    daemon = helm["dagsterDaemon"]
    assert set(daemon) <= DAEMON, set(daemon) - DAEMON
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert set(daemon["runCoordinator"]["config"]["queuedRunCoordinator"]) <= QUEUED_COORDINATOR
    assert set(daemon["runMonitoring"]) <= RUN_MONITORING
    assert set(daemon["runRetries"]) <= {"enabled", "maxRetries", "retryOnAssetOrOpFailure"}
    for values in (helm, load_yaml(HELM_DIR / "values-gpu.yaml")):
        conc = values["concurrency"]
        assert set(conc) <= set(CONCURRENCY)
        assert set(conc["pools"]) <= CONCURRENCY["pools"] and set(conc["runs"]) <= CONCURRENCY["runs"]
    # the same policies as the repository's dagster.yaml
    instance = load_yaml(ROOT / "dagster.yaml")
    assert helm["concurrency"]["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    assert daemon["runRetries"] == {"enabled": True, "maxRetries": instance["run_retries"]["max_retries"],
                                    "retryOnAssetOrOpFailure": False}
    assert daemon["runMonitoring"]["freeSlotsAfterRunEndSeconds"] == \
        instance["run_monitoring"]["free_slots_after_run_end_seconds"]
    assert daemon["runMonitoring"]["cancelTimeoutSeconds"] == instance["run_monitoring"]["cancel_timeout_seconds"]


# --- the GPU node selector: dagster-k8s/config ---------------------------------------------------------

# dagster_k8s.job.USER_DEFINED_K8S_JOB_CONFIG_SCHEMA (dagster-k8s is not installed here)
K8S_CONFIG_TAG = "dagster-k8s/config"
K8S_TAG_SCHEMA = dg.Shape({
    "container_config": dg.Field(dg.Permissive(), is_required=False),
    "pod_template_spec_metadata": dg.Field(dg.Permissive(), is_required=False),
    "pod_spec_config": dg.Field(dg.Permissive(), is_required=False),
    "job_config": dg.Field(dg.Permissive(), is_required=False),
    "job_metadata": dg.Field(dg.Permissive(), is_required=False),
    "job_spec_config": dg.Field(dg.Permissive(), is_required=False),
    "merge_behavior": dg.Field(dg.Enum("K8sConfigMergeBehavior", [dg.EnumValue("SHALLOW"), dg.EnumValue("DEEP")]),
                               is_required=False),
})


def test_gpu_tag_is_a_dagster_k8s_config_tag_matching_the_gpu_values():
    tag = json.loads((HELM_DIR / "gpu-tag.json").read_text())
    result = validate_config(K8S_TAG_SCHEMA, tag)
    assert result.success, [e.message for e in result.errors]
    selector = tag["pod_spec_config"]["node_selector"]
    assert selector and all(isinstance(v, str) for v in selector.values())  # label values are strings
    assert tag["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert not unknown(e["name"] for e in tag["container_config"]["env"])
    # as a tag on a run (what the K8sRunLauncher reads) and on an op (the k8s_job_executor's step pods)
    assert dg.RunRequest(run_key="j1", tags={K8S_CONFIG_TAG: json.dumps(tag)}).tags[K8S_CONFIG_TAG]

    @dg.op(tags={K8S_CONFIG_TAG: tag})
    def gpu_step():
        return None

    assert json.loads(gpu_step.tags[K8S_CONFIG_TAG]) == tag
    # the values file that puts every run on the GPU nodes says the same, in the chart's camelCase
    gpu = load_yaml(HELM_DIR / "values-gpu.yaml")["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    assert set(gpu) <= RUN_K8S_CONFIG
    assert gpu["podSpecConfig"]["nodeSelector"] == selector
    assert gpu["podSpecConfig"]["tolerations"] == tag["pod_spec_config"]["tolerations"]
    assert gpu["containerConfig"]["env"] == tag["container_config"]["env"]
    assert gpu["containerConfig"]["resources"] == tag["container_config"]["resources"]


# --- Dagster instance configs in deploy/ ------------------------------------------------------------------

# dagster_aws.s3.compute_log_manager.S3ComputeLogManager.config_type() of dagster-aws 0.29.27
S3_COMPUTE_LOGS_SCHEMA = {
    "bucket": dg.StringSource,
    "local_dir": dg.Field(dg.StringSource, is_required=False),
    "prefix": dg.Field(dg.StringSource, is_required=False, default_value="dagster"),
    "use_ssl": dg.Field(bool, is_required=False, default_value=True),
    "verify": dg.Field(bool, is_required=False, default_value=True),
    "verify_cert_path": dg.Field(dg.StringSource, is_required=False),
    "endpoint_url": dg.Field(dg.StringSource, is_required=False),
    "skip_empty_files": dg.Field(bool, is_required=False, default_value=False),
    "upload_interval": dg.Field(dg.Noneable(int), is_required=False, default_value=None),
    "upload_extra_args": dg.Field(dg.Permissive(), is_required=False),
    "show_url_only": dg.Field(bool, is_required=False, default_value=False),
    "region": dg.Field(dg.StringSource, is_required=False),
}
NOT_INSTALLED = {("dagster_aws.s3.compute_log_manager", "S3ComputeLogManager"): S3_COMPUTE_LOGS_SCHEMA}


def configurable_classes(config: dict):
    for key, value in config.items():
        if isinstance(value, dict) and {"module", "class"} <= set(value):
            yield key, value


@pytest.mark.parametrize("path", deploy_instance_configs(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_deploy_instance_config_passes_dagsters_schema(path):
    # the whole file, by the function DagsterInstance.from_config uses (structure of every section)
    dagster_instance_config(str(path.parent), path.name)
    config = load_yaml(path)
    checked = []
    for key, spec in configurable_classes(config):
        if (spec["module"], spec["class"]) in NOT_INSTALLED:
            schema = NOT_INSTALLED[(spec["module"], spec["class"])]
        else:  # installed: the class's own config schema
            schema = getattr(importlib.import_module(spec["module"]), spec["class"]).config_type()
        result = validate_config(schema, spec.get("config") or {})
        assert result.success, (key, [e.message for e in result.errors])
        checked.append(key)
        if key == "run_launcher" and (spec["module"], spec["class"]) not in NOT_INSTALLED:
            from dagster_celery.launcher import CeleryRunLauncher

            launcher = getattr(importlib.import_module(spec["module"]), spec["class"])
            if issubclass(launcher, CeleryRunLauncher):  # the Celery profile: its guide, with the gpu queue
                guide = (path.parent / "README.md").read_text()
                assert "gpu" in guide and "dagster-celery/queue" in guide
    assert "run_coordinator" in checked
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    # the policies of the repository's dagster.yaml (a change there must reach the deployments)
    instance = load_yaml(ROOT / "dagster.yaml")
    assert config["concurrency"]["pools"] == instance["concurrency"]["pools"]
    assert config["run_retries"]["max_retries"] == instance["run_retries"]["max_retries"]
    assert config["run_retries"]["retry_on_asset_or_op_failure"] is False
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] == \
        instance["run_monitoring"]["free_slots_after_run_end_seconds"]


def test_compose_instance_keeps_compute_logs_in_s3():
    config = load_yaml(COMPOSE_DIR / "dagster.yaml")
    logs = config["compute_logs"]
    assert (logs["module"], logs["class"]) == ("dagster_aws.s3.compute_log_manager", "S3ComputeLogManager")
    assert logs["config"]["bucket"] == {"env": "DUBBING_S3_BUCKET"}
    assert logs["config"]["show_url_only"] is False  # the UI shows the text
    assert logs["config"]["upload_interval"]  # a running step's output reaches the other machines


@pytest.mark.postgres
def test_compose_migrate_step_prepares_an_empty_deployment_and_can_run_again(tmp_path, pg_url):
    """deploy/compose/migrate.sh as the `migrate` service runs it, on an empty database and a fresh S3
    server: Dagster's tables, the bucket, the job store, the first admin; run again it changes nothing."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from s3_server import SeaweedS3

    home = tmp_path / "home"
    home.mkdir()
    config = load_yaml(COMPOSE_DIR / "dagster.yaml")
    config.pop("compute_logs")  # dagster-aws is not installed here: the default (local) compute logs
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with SeaweedS3(tmp_path / "s3") as s3:
        env = {**os.environ, **s3.env, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
               "DAGSTER_HOME": str(home), "DUBBING_DATA_DIR": str(tmp_path / "data"),
               "DAGSTER_POSTGRES_URL": pg_url, "DATABASE_URL": pg_url, "DUBBING_S3_BUCKET": "compose-check"}
        outputs = []
        for _ in range(2):
            out = subprocess.run(["sh", str(COMPOSE_DIR / "migrate.sh")], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=300)
            assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
            outputs.append(out.stdout)
        s3.client().head_bucket(Bucket="compose-check")  # created by the first run
    assert "created the first admin" in outputs[0] and "created the first admin" not in outputs[1]
    import sqlalchemy as sa

    from resources.jobstore import MIGRATIONS_DIR

    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("select version_num from dubbing_alembic_version")).scalar_one()
            assert conn.execute(sa.text("select count(*) from runs")).scalar_one() == 0  # Dagster's tables
    finally:
        engine.dispose()
    from alembic.script import ScriptDirectory

    assert version == ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    os.environ["DAGSTER_POSTGRES_URL"] = pg_url
    try:
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            assert "Postgres" in type(instance.run_storage).__name__
            assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
            settings = instance.get_concurrency_config()
            assert settings.pool_config.default_pool_limit == 1
            assert settings.run_queue_config.max_concurrent_runs == 2
        finally:
            instance.dispose()
    finally:
        os.environ.pop("DAGSTER_POSTGRES_URL", None)


# --- pools ----------------------------------------------------------------------------------------------

def test_the_heavy_stages_carry_their_pools():
    from dubbing_assets.definitions import defs

    job = defs.resolve_job_def("dub_job")
    pools = {node.name: node.definition.pool for node in job.graph.node_dict.values()}
    assert pools == {"source_media": None, "extracted_audio": None, "transcript": "asr", "translation": None,
                     "dubbed_speech": "tts", "dubbed_mix": None, "dubbed_video": None,
                     "dubbed_speech_round_trip": "asr"}  # the dub heard again: Whisper, one at a time


def test_instance_configs_limit_every_pool_and_the_cli_raises_one(tmp_path):
    for path in [ROOT / "dagster.yaml", ROOT / "resources" / "dagster_embedded.yaml", *deploy_instance_configs()]:
        assert load_yaml(path)["concurrency"]["pools"]["default_limit"] == 1, path
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "resources" / "dagster_embedded.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        for pool in ("asr", "tts"):
            storage.initialize_concurrency_limit_to_default(pool)  # what a step in the pool does first
            assert storage.get_concurrency_info(pool).slot_count == 1
    # a GPU box: more syntheses at once (docs/deploy.md, "Pools"); stored in the instance's database
    out = subprocess.run([str(BIN / "dagster"), "instance", "concurrency", "set", "tts", "4"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.get_concurrency_info("tts").slot_count == 4
        assert instance.event_log_storage.get_concurrency_info("asr").slot_count == 1


# --- image ----------------------------------------------------------------------------------------------

def test_dockerfile_builds_what_the_processes_need():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, re.M)  # requires-python >=3.11,<3.13; Debian 12
    setup = (ROOT / "scripts" / "setup_system.sh").read_text()
    for package in ("ffmpeg", "espeak-ng", "apertium-eng-spa"):
        assert package in setup and re.search(rf"apt-get install[^\n]*\b{package}\b", text), package
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r'include = \[([^\]]+)\]', pyproject).group(1).replace('"', "").replace("*", "")
    for package in packages.split(","):
        assert re.search(rf"^COPY {package.strip()} ", text, re.M), package
    postgres_pin = re.search(r'"dagster-postgres==([\d.]+)"', pyproject).group(1)
    for extra in ("dagster-aws", "dagster-k8s"):
        assert f'"{extra}=={postgres_pin}"' in text, extra  # the integrations of dagster 1.13.27
    assert "-c requirements.lock" in text
    uv = re.search(r"^UV_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f'"uv=={uv}"' in text


# --- docs -----------------------------------------------------------------------------------------------

def test_deploy_doc_names_real_settings_and_existing_files():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    table = [line for line in doc.splitlines() if line.startswith("| `")]
    names = {n for line in table for n in re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", line.split("|")[1])}
    assert len(names) >= 15 and not unknown(names), unknown(names)
    for ref in set(re.findall(r"\]\(\.\./(deploy/[^)#\s]+)\)", doc)):
        assert (ROOT / ref).exists(), ref
    assert "proxy_request_buffering off" in doc and "S3ComputeLogManager" in doc
    assert "docs/deploy.md" in (ROOT / "README.md").read_text()



# --- nginx for real: bodies streamed to the replicas -------------------------------------------------------

class _Replica:
    """A stand-in API replica: counts, per path, the body bytes received so far, and answers its name."""

    def __init__(self, name: str):
        import http.server
        import threading

        replica = self
        self.name, self.received = name, {}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                length, got = int(self.headers.get("Content-Length") or 0), 0
                replica.received[self.path] = 0
                while got < length:
                    piece = self.rfile.read1(min(65536, length - got))
                    if not piece:
                        break
                    got += len(piece)
                    replica.received[self.path] = got
                body = replica.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_PATCH = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _run_nginx(work: Path, replicas: list[_Replica], request_buffering: str = "off"):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = NGINX.read_text().replace("listen 80;", f"listen 127.0.0.1:{port};")
    for i, replica in enumerate(replicas, 1):
        conf = conf.replace(f"api{i}:8000", f"127.0.0.1:{replica.port}")
    conf = conf.replace("proxy_request_buffering off;", f"proxy_request_buffering {request_buffering};")
    conf = conf.replace("access_log /dev/stdout;", "access_log logs/access.log;")
    conf = conf.replace("error_log /dev/stderr warn;", "error_log logs/error.log warn;")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([nginx_binary(), "-p", str(work), "-c", str(work / "nginx.conf"),
                             "-e", str(work / "logs/e.log"),
                             "-g", f"daemon off; pid {work / 'nginx.pid'};"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"nginx did not start: {proc.stderr.read().decode()[-1000:]}") from None
            time.sleep(0.1)


def _put_in_two_halves(port: int, method: str, path: str, size: int, replicas: list[_Replica]):
    """Headers and the first half of the body; then, once a replica has body bytes (or after 3 s), the
    rest. Returns the status, the replica that answered, and whether it had bytes before the second half."""
    import socket
    import time

    half = size // 2
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {size}\r\n"
                     f"Connection: close\r\n\r\n".encode() + b"x" * half)
        deadline, early = time.monotonic() + 3, False
        while not early and time.monotonic() < deadline:
            early = any(r.received.get(path, 0) > 0 for r in replicas)
            time.sleep(0.02)
        response = b""
        try:
            sock.sendall(b"y" * (size - half))
        except OSError:  # a refused body (413): nginx answers and closes before reading it all
            pass
        try:
            while chunk := sock.recv(65536):
                response += chunk
        except ConnectionResetError:
            if not response:
                raise
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode(), early


def test_nginx_streams_chunks_and_tus_bodies_to_a_replica_as_they_arrive(tmp_path):
    replicas = [_Replica("api1"), _Replica("api2")]
    proc, port = _run_nginx(tmp_path / "on", replicas)
    try:
        # an 8 MiB chunk reaches a replica while the client is still sending it
        status, first, early = _put_in_two_halves(port, "PUT", "/api/uploads/u1/chunk?index=0", 8 * 1024**2, replicas)
        assert (status, early) == (200, True)
        assert replicas[int(first[-1]) - 1].received["/api/uploads/u1/chunk?index=0"] == 8 * 1024**2
        # the next chunks of the same upload go to the same replica (hash by upload id)
        for index in (1, 2, 3):
            assert _put_in_two_halves(port, "PUT", f"/api/uploads/u1/chunk?index={index}", 1024**2,
                                      replicas)[:2] == (200, first)
        # a tus PATCH far above a chunk passes, streamed too
        status, _, early = _put_in_two_halves(port, "PATCH", "/api/tus/t1", 40 * 1024**2, replicas)
        assert (status, early) == (200, True)
        # anything else keeps the small limit
        assert _put_in_two_halves(port, "POST", "/api/auth/login", 2 * 1024**2, replicas)[0] == 413
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # the same check catches a proxy that buffers: with buffering on, nothing arrives before the end
    proc, port = _run_nginx(tmp_path / "buffered", replicas, request_buffering="on")
    try:
        status, _, early = _put_in_two_halves(port, "PUT", "/api/uploads/u2/chunk?index=0", 8 * 1024**2, replicas)
        assert (status, early) == (200, False)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
