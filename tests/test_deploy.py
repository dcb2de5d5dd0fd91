"""deploy/: the container image, compose file, systemd units and Kubernetes manifests, checked offline.

The Kubernetes manifests are rendered here the way `kubectl kustomize` renders them (a small subset of
kustomize: resources, namespace, labels, images, replicas, strategic-merge patches of maps), then every
object is validated against the Kubernetes 1.29 JSON schemas in strict mode (unknown fields are errors)
by the PyPI package `kubernetes-validate`, which ships the schemas: no cluster, no network, no kubectl.
Then the invariants of deploy/README.md are pinned: at least two gateways, probes on /readyz and
/healthz, CronJobs that never overlap, no secret inlined anywhere, non-root everywhere, and a
configuration that `ght` itself accepts.
"""

from __future__ import annotations

import configparser
import copy
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # a test dependency (pyproject.toml): schemas bundled, no network
import pytest
import yaml

from directory_sync.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.29"  # the oldest version still supported by the usual managed offers
OVERLAYS = ["base", "overlays/example"]
#: What a Kubernetes object of each kind is never allowed to carry: a secret value.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEK|_KEY\b|PRIVATE", re.IGNORECASE)
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


# -- a minimal kustomize ---------------------------------------------------------------------------


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge, for maps only (lists are replaced; `null` deletes): enough for our patches."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(base.get(key), value)
    return merged


def _containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = _pod_spec(obj)
    if spec is not None:
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def _load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize directory` would print (for the features deploy/ uses)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    known = {
        "apiVersion", "kind", "namespace", "labels", "resources", "images", "replicas", "patches",
    }  # fmt: skip
    unsupported = set(kustomization) - known
    assert not unsupported, f"{directory}: this test's kustomize does not handle {unsupported}"
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else _load_documents(path)
    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, f"{directory}: only file patches are handled"
        for patch in _load_documents(directory / patch_entry["path"]):
            targets = [
                i
                for i, obj in enumerate(objects)
                if obj["kind"] == patch["kind"] and obj["metadata"]["name"] == patch["metadata"]["name"]
            ]
            assert len(targets) == 1, f"patch {patch_entry['path']} matches {len(targets)} objects"
            objects[targets[0]] = _merge(objects[targets[0]], patch)
    namespace = kustomization.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        for label in kustomization.get("labels", []):
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
            assert not label.get("includeSelectors"), "selectors are left alone"
        for container in _containers(obj):
            for image in kustomization.get("images", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
        for replicas in kustomization.get("replicas", []):
            if obj["kind"] == "Deployment" and obj["metadata"]["name"] == replicas["name"]:
                obj["spec"]["replicas"] = replicas["count"]
    return objects


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(KUBE / request.param)


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if _pod_spec(o) is not None]


# -- Kubernetes: schemas -----------------------------------------------------------------------------


def _validate(obj: dict[str, Any], where: str) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{where}: {exc.message}")


def test_every_rendered_object_validates_against_the_kubernetes_schemas(
    rendered: list[dict[str, Any]],
) -> None:
    assert len(rendered) >= 12
    for obj in rendered:
        _validate(obj, f"rendered {obj['kind']}")


def test_every_manifest_file_validates_on_its_own() -> None:
    """Each file of resources, as written (patches are partial objects: they are checked rendered)."""
    checked = 0
    for directory in OVERLAYS:
        kustomization = yaml.safe_load((KUBE / directory / "kustomization.yaml").read_text())
        for entry in kustomization["resources"]:
            path = KUBE / directory / entry
            if path.is_dir():
                continue
            for obj in _load_documents(path):
                _validate(obj, str(path.relative_to(ROOT)))
                checked += 1
    assert checked >= 15


def test_the_validator_rejects_what_it_should() -> None:
    """The strict schema check is not vacuous: a misspelt field and a wrong type are both refused."""
    deployment = _one(render(KUBE / "base"), "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["replica"] = 2
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8000]
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (optional check)")
@pytest.mark.parametrize("directory", OVERLAYS)
def test_the_rendering_matches_kubectl_kustomize(directory: str) -> None:
    """Where kubectl is installed, this test's kustomize gives the same objects as the real one."""
    proc = subprocess.run(
        ["kubectl", "kustomize", str(KUBE / directory)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    real = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    ours = {key(o): o for o in render(KUBE / directory)}
    assert sorted(ours) == sorted(key(o) for o in real)
    for obj in real:
        assert obj["spec" if "spec" in obj else "metadata"] == ours[key(obj)].get(
            "spec" if "spec" in obj else "metadata"
        ), key(obj)
        if obj["kind"] == "ConfigMap":
            assert obj["data"] == ours[key(obj)]["data"]


# -- Kubernetes: invariants --------------------------------------------------------------------------


def test_gateway_has_replicas_probes_and_resources(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment", "ght-gateway")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["gateway", "serve"]
    port = container["ports"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
    assert container["args"][container["args"].index("--port") + 1] == str(port["containerPort"])
    service = _one(rendered, "Service", "ght-gateway")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def test_gateway_disruption_budget_and_autoscaler(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment", "ght-gateway")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = _one(rendered, "PodDisruptionBudget", "ght-gateway")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] >= 1
    hpa = _one(rendered, "HorizontalPodAutoscaler", "ght-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ght-gateway",
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


def test_every_workload_runs_unprivileged_with_limits(rendered: list[dict[str, Any]]) -> None:
    workloads = _workloads(rendered)
    assert {o["kind"] for o in workloads} == {"Deployment", "CronJob", "Job"}
    for obj in workloads:
        spec = _pod_spec(obj)
        assert spec is not None
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] != 0, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for container in _containers(obj):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            assert ":" in container["image"] and not container["image"].endswith(":latest"), where


def test_one_cronjob_per_schedule_never_overlapping(rendered: list[dict[str, Any]]) -> None:
    cronjobs = _of_kind(rendered, "CronJob")
    assert len(cronjobs) >= 1
    assert len({c["spec"]["schedule"] for c in cronjobs}) == len(cronjobs)
    for cronjob in cronjobs:
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        (container,) = _pod_spec(cronjob)["containers"]  # type: ignore[index]
        assert container["args"][:2] == ["sync", "run"]
        assert "--every" not in container["args"]  # the CronJob is the schedule
    # The comment says the database lock is the real guard, and names where it lives.
    text = (KUBE / "base" / "sync-cronjobs.yaml").read_text()
    assert "directory_sync/locking.py" in text and "advisory lock" in text


def test_migration_job_runs_db_upgrade(rendered: list[dict[str, Any]]) -> None:
    job = _one(rendered, "Job")
    (container,) = _pod_spec(job)["containers"]  # type: ignore[index]
    assert container["args"] == ["db", "upgrade"]
    assert _pod_spec(job)["restartPolicy"] == "Never"  # type: ignore[index]
    # The Job's name carries the image's version (a Job's template cannot change in place).
    version = container["image"].rsplit(":", 1)[1]
    assert job["metadata"]["name"] == "ght-migrate-" + version.replace(".", "-")


def test_no_secret_is_inlined(rendered: list[dict[str, Any]]) -> None:
    assert _of_kind(rendered, "Secret") == []
    referenced: set[str] = set()
    for obj in _workloads(rendered):
        spec = _pod_spec(obj)
        assert spec is not None
        for container in _containers(obj):
            assert "envFrom" not in container
            for env in container.get("env", []):
                if "value" in env:
                    assert not SECRET_NAME.search(env["name"]), f"{env['name']} is inlined"
                else:
                    referenced.add(env["valueFrom"]["secretKeyRef"]["name"])
        for volume in spec.get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []):
                if "secret" in source:
                    referenced.add(source["secret"]["name"])
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
    # Exactly the Secrets that deploy/kubernetes/base/kustomization.yaml tells operators to create.
    assert referenced == {"ght-database", "ght-gateway", "ght-bind-passwords", "ght-metrics"}
    instructions = (KUBE / "base" / "kustomization.yaml").read_text()
    for name in referenced:
        assert f"create secret generic {name}" in instructions
    for configmap in _of_kind(rendered, "ConfigMap"):
        assert "binaryData" not in configmap


def test_network_policy_lets_the_gateway_reach_only_postgres_ldap_and_dns(
    rendered: list[dict[str, Any]],
) -> None:
    policies = {p["metadata"]["name"]: p for p in _of_kind(rendered, "NetworkPolicy")}
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    gateway = policies["ght-gateway"]["spec"]
    pod_labels = _one(rendered, "Deployment", "ght-gateway")["spec"]["template"]["metadata"]["labels"]
    assert gateway["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ports = set()
    for rule in gateway["egress"]:
        assert rule.get("to"), "an egress rule without destinations allows everywhere"
        rule_ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
        ports |= rule_ports
        if rule_ports & {("TCP", 5432), ("TCP", 389), ("TCP", 636)}:
            assert all("ipBlock" in peer and "except" not in peer["ipBlock"] for peer in rule["to"])
    assert ports == {("TCP", 5432), ("TCP", 389), ("TCP", 636), ("UDP", 53), ("TCP", 53)}
    (ingress,) = gateway["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8000}]


def test_configuration_is_accepted_by_ght(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    """The ConfigMaps, projected as the pods see them, load with `ght`'s own settings code."""
    config = _one(rendered, "ConfigMap", "ght-config")["data"]
    codes = _one(rendered, "ConfigMap", "ght-codes")["data"]
    # The shared tables are the repository's, not a stale copy.
    assert config["correlation.yaml"] == (ROOT / "mappings" / "correlation.yaml").read_text()
    assert codes["g15.yaml"] == (ROOT / "mappings" / "codes" / "g15.yaml").read_text()
    deployment = _one(rendered, "Deployment", "ght-gateway")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    etc = tmp_path / "etc-ght"
    (etc / "codes").mkdir(parents=True)
    for source in volume["projected"]["sources"]:
        data = {"ght-config": config, "ght-codes": codes}[source["configMap"]["name"]]
        items = source["configMap"].get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            (etc / item["path"]).write_text(data[item["key"]], encoding="utf-8")
    settings = load_settings(etc / "ght.toml")
    assert settings.gateway is not None and settings.gateway.issuer.startswith("https://")
    assert settings.gateway.key_encryption_key.file == Path("/run/credentials/ght/kek")
    assert urlsplit(settings.database_url).password is None
    sites = settings.load_sites()
    assert sites and settings.professions
    for site in sites:
        password = getattr(site.connection, "bind_password", None)
        assert password is not None and password.file == Path(f"/run/credentials/ght/{site.code}")


def test_overlay_patches_image_replicas_and_host() -> None:
    base, overlay = render(KUBE / "base"), render(KUBE / "overlays/example")
    assert _one(overlay, "Deployment")["spec"]["replicas"] > _one(base, "Deployment")["spec"]["replicas"]
    images = {c["image"] for o in _workloads(overlay) for c in _containers(o)}
    assert len(images) == 1 and images.pop().startswith("registry.")
    ingress = _one(overlay, "Ingress", "ght-gateway")
    host = ingress["spec"]["rules"][0]["host"]
    assert ingress["spec"]["tls"][0]["hosts"] == [host]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == _one(overlay, "Service")["metadata"]["name"]
    issuer = tomllib.loads(_one(overlay, "ConfigMap", "ght-config")["data"]["ght.toml"])["gateway"]["issuer"]
    assert issuer == f"https://{host}"


# -- Dockerfile --------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_without_compilers() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    assert len(froms) >= 2
    final = lines[froms[-1] :]
    base_image = next(line for line in lines if line.startswith("ARG PYTHON_IMAGE=")).split("=", 1)[1]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base_image)
    assert not any(re.search(r"build-essential|gcc|apt-get install", line) for line in final)
    assert any(line.startswith("COPY --from=") and "/opt/ght/venv" in line for line in final)
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert 'ENTRYPOINT ["ght"]' in final
    assert any(line.startswith("COPY") and "mappings/" in line for line in final)
    assert "sha256" in (DEPLOY / "Dockerfile").read_text()  # the comment on pinning by digest


# -- compose -----------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_compose_services_and_order() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "migrate", "gateway", "sync"}
    assert re.match(r"postgres:15\b", services["postgres"]["image"])
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    gateway, sync = services["gateway"], services["sync"]
    assert gateway["command"][:2] == ["gateway", "serve"]
    assert gateway["command"][gateway["command"].index("--workers") + 1] == "2"
    assert "/readyz" in " ".join(gateway["healthcheck"]["test"])
    assert sync["command"] == ["sync", "run", "--every", "10m"]
    for name in ("gateway", "sync"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["postgres"] == {"condition": "service_healthy"}
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # Published on the host's loopback only: the TLS reverse proxy is in front.
    assert all(p.startswith("127.0.0.1:") for p in gateway["ports"])


def test_compose_runs_ght_unprivileged_and_keeps_secrets_in_files() -> None:
    compose = _compose()
    services = compose["services"]
    for name in ("migrate", "gateway", "sync"):
        service = services[name]
        assert service["user"].split(":")[0] not in ("root", "0")
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert "ght_db_password" in service["secrets"]
    assert "ght_kek" in services["gateway"]["secrets"]
    for name, service in services.items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key}"
            if "://" in str(value):
                assert urlsplit(str(value)).password is None, f"{name}: {key} carries a password"
    secrets = compose["secrets"]
    assert set(secrets) == {"ght_db_password", "ght_kek"}
    ignored = (DEPLOY / "secrets" / ".gitignore").read_text().splitlines()
    assert "*" in ignored
    for secret in secrets.values():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/")
    # The configuration the services mount: accepted by ght, the KEK a compose secret file.
    settings = load_settings(DEPLOY / "compose" / "ght.toml")
    assert settings.gateway is not None
    assert settings.gateway.key_encryption_key.file == Path("/run/secrets/ght_kek")
    assert urlsplit(settings.database_url).password is None


# -- systemd -----------------------------------------------------------------------------------------

UNITS = ["ght-gateway.service", "ght-sync.service", "ght-migrate.service"]


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(DEPLOY / "systemd" / name, encoding="utf-8")
    return parser


def _directives(name: str, key: str) -> list[str]:
    """Every value of a directive (systemd allows repeating them; configparser keeps the last)."""
    return [
        line.split("=", 1)[1].strip()
        for line in (DEPLOY / "systemd" / name).read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


@pytest.mark.parametrize("name", UNITS)
def test_systemd_units_are_unprivileged_and_hardened(name: str) -> None:
    service = _unit(name)["Service"]
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "root", "0")
    assert service.get("User", "ght") not in ("root", "0")
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["ProtectHome"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["ExecStart"].startswith("/opt/ght/venv/bin/ght ")
    # Secrets: a 0600 environment file and credentials, never a value in the unit.
    assert service["EnvironmentFile"] == "/etc/ght/ght.env"
    for value in _directives(name, "Environment"):
        assert not SECRET_NAME.search(value.split("=", 1)[0]), value
    for credential in _directives(name, "LoadCredential"):
        _, _, path = credential.partition(":")
        assert path.startswith("/etc/ght/credentials/"), credential


def test_systemd_units_commands_and_order() -> None:
    gateway, sync, migrate = (_unit(n) for n in UNITS)
    assert "--workers" in gateway["Service"]["ExecStart"]
    workers = gateway["Service"]["ExecStart"].split("--workers")[1].split()[0]
    assert int(workers) >= 2
    assert gateway["Service"]["ExecStart"].split("--host")[1].split()[0] == "127.0.0.1"
    assert sync["Service"]["ExecStart"].endswith("ght sync run")
    assert migrate["Service"]["ExecStart"].endswith("ght db upgrade")
    assert migrate["Service"]["Type"] == "oneshot"
    for unit in (gateway, sync):
        assert "ght-migrate.service" in unit["Unit"]["Requires"].split()
        assert "ght-migrate.service" in unit["Unit"]["After"].split()
    assert next(c.split(":")[0] for c in _directives("ght-gateway.service", "LoadCredential")) == "kek"
    assert "kek" not in [c.split(":")[0] for c in _directives("ght-sync.service", "LoadCredential")]
    timer = _unit("ght-sync.timer")
    assert timer["Timer"]["OnUnitInactiveSec"] == "10min"
    assert timer["Install"]["WantedBy"] == "timers.target"
    env = (DEPLOY / "systemd" / "ght.env.example").read_text()
    assert all(line.endswith("=") for line in env.splitlines() if line and not line.startswith("#"))
    assert "0600" in env
