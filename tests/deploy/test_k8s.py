"""The Kubernetes manifests of deploy/k8s/: every object against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail) for the oldest and newest Kubernetes this
project claims, the kustomizations rendered the way `kubectl apply -k` would for the features
they use, and the consistency of the pieces with each other and with the image."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import DOCKERFILE, K8S, dev_module, parse_dockerfile

# Oldest and newest Kubernetes minor versions the manifests are checked against.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

OBJECT_FILES = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_all(path: Path) -> list[dict[str, Any]]:
    yaml = dev_module("yaml")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def validate(obj: dict[str, Any], version: str) -> None:
    kv = dev_module("kubernetes_validate")
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as err:
        where = ".".join(str(p) for p in err.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {err.message}")
    except kv.SchemaNotFoundError as err:
        pytest.fail(err.message)


def _apply_json_patch(obj: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 ``add`` (the only operation the overlays use)."""
    obj = copy.deepcopy(obj)
    for op in operations:
        assert op["op"] == "add", f"unsupported patch operation {op['op']}"
        *parents, last = op["path"].lstrip("/").split("/")
        target: Any = obj
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), op["value"])
        else:
            target[last] = op["value"]
    return obj


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k folder` creates, for the kustomize features used here:
    resources (files or folders), images (newName/newTag) and JSON 6902 patches by target."""
    yaml = dev_module("yaml")
    (kustomization,) = load_all(folder / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        assert path.exists(), f"{folder}/kustomization.yaml: no resource {resource}"
        objects += render(path) if path.is_dir() else load_all(path)
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in (
                obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
            ):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matches = [
            i
            for i, obj in enumerate(objects)
            if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]
        ]
        assert matches, f"patch target {target} matches no resource"
        for i in matches:
            objects[i] = _apply_json_patch(objects[i], yaml.safe_load(patch["patch"]))
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


# --- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", OBJECT_FILES, ids=lambda p: str(p.relative_to(K8S)))
def test_every_object_follows_the_kubernetes_schema(path: Path, version: str) -> None:
    objects = load_all(path)
    assert objects, f"{path} holds no object"
    for obj in objects:
        validate(obj, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("folder", [K8S, K8S / "model-store-pvc"], ids=["base", "pvc-overlay"])
def test_rendered_kustomizations_follow_the_schema(folder: Path, version: str) -> None:
    for obj in render(folder):
        validate(obj, version)


def test_every_object_file_is_used_by_a_kustomization() -> None:
    used = {
        o["metadata"]["name"] + o["kind"] for f in (K8S, K8S / "model-store-pvc") for o in render(f)
    }
    for path in OBJECT_FILES:
        for obj in load_all(path):
            assert obj["metadata"]["name"] + obj["kind"] in used, f"{path} is applied by nothing"


def test_kubernetes_validate_is_live() -> None:
    (deployment,) = load_all(K8S / "deployment.yaml")
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")  # a typo strict mode must catch
    kv = dev_module("kubernetes_validate")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


# --- the pieces fit ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(K8S)


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(objects, "Deployment")["spec"]["template"]


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _pod(objects)["spec"]["containers"]
    return container


def test_each_pod_gets_one_gpu_and_bounded_memory(base: list[dict[str, Any]]) -> None:
    resources = _container(base)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    assert "memory" in resources["requests"] and "memory" in resources["limits"]
    assert "cpu" in resources["requests"]
    tolerations = _pod(base)["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_probes_readiness_on_readyz_liveness_on_healthz(base: list[dict[str, Any]]) -> None:
    container = _container(base)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    # The image listens on the port the probes and the Service use.
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert ports["http"] == int(stages[-1].env()["VERYDEEP_PORT"])


def test_service_and_budget_select_the_pods(base: list[dict[str, Any]]) -> None:
    labels = _pod(base)["metadata"]["labels"]
    deployment = by_kind(base, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = by_kind(base, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in _container(base)["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    budget = by_kind(base, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for spread in _pod(base)["spec"]["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] >= 2


def test_settings_come_from_the_configmap(base: list[dict[str, Any]]) -> None:
    configmap = by_kind(base, "ConfigMap")
    refs = [e["configMapRef"]["name"] for e in _container(base)["envFrom"]]
    assert refs == [configmap["metadata"]["name"]]
    data = configmap["data"]
    assert all(key.startswith("VERYDEEP_") for key in data)
    assert all(isinstance(v, str) for v in data.values())
    assert data["VERYDEEP_MODEL_STORE"] == "/models"  # the store baked into the image
    settings = pytest.importorskip("service.settings", reason="the service's settings module")
    known = {f"VERYDEEP_{name.upper()}" for name in settings.Settings.model_fields}
    assert set(data) <= known, set(data) - known


def test_pod_runs_as_the_image_user_on_a_read_only_root(base: list[dict[str, Any]]) -> None:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    uid = int(stages[-1].all("USER")[-1].args.split(":")[0])
    pod = _pod(base)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    security = _container(base)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # Uploads spool to /tmp, which must then be a writable volume.
    mounts = {m["mountPath"]: m["name"] for m in _container(base)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_image_is_the_one_the_dockerfile_builds(base: list[dict[str, Any]]) -> None:
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    (image,) = kustomization["images"]
    assert _container(base)["image"] == f"{image['name']}:{image['newTag']}"


def test_pvc_overlay_mounts_the_claim_read_only_over_the_baked_store() -> None:
    objects = render(K8S / "model-store-pvc")
    claim = by_kind(objects, "PersistentVolumeClaim")
    pod = _pod(objects)["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _container(objects)["volumeMounts"]}
    store = mounts["/models"]
    assert store["readOnly"] is True
    source = volumes[store["name"]]["persistentVolumeClaim"]
    assert source["claimName"] == claim["metadata"]["name"] and source["readOnly"] is True
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # shared, and fillable
    assert by_kind(objects, "ConfigMap")["data"]["VERYDEEP_MODEL_STORE"] == "/models"


# --- failover (the reasoning of test_container_failover.py, for a cluster) ---------------------


def test_termination_outlasts_pre_stop_and_the_graceful_shutdown(
    base: list[dict[str, Any]],
) -> None:
    """Endpoints drop a terminating pod asynchronously: preStop keeps it serving meanwhile, then
    SIGTERM drains within VERYDEEP_SHUTDOWN_TIMEOUT; the kubelet's SIGKILL must come after both."""
    container = _container(base)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 5  # kube-proxy and Ingress controllers take a few seconds
    data = by_kind(base, "ConfigMap")["data"]
    if "VERYDEEP_SHUTDOWN_TIMEOUT" in data:
        shutdown = float(data["VERYDEEP_SHUTDOWN_TIMEOUT"])
    else:
        settings = pytest.importorskip("service.settings", reason="the service's settings module")
        shutdown = settings.Settings.model_fields["shutdown_timeout"].default
    grace = _pod(base)["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + shutdown + 5, (grace, pre_stop, shutdown)


def test_rollouts_keep_ready_pods_serving(base: list[dict[str, Any]]) -> None:
    """One pod at a time is replaced, a new one only counts once it has been ready a while, and
    readiness follows /readyz closely enough that pods join and leave in seconds."""
    deployment = by_kind(base, "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert deployment["spec"]["replicas"] >= 2  # one left serving while one is replaced
    readiness = _container(base)["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 10
    assert readiness["timeoutSeconds"] <= readiness["periodSeconds"]
    assert deployment["spec"]["minReadySeconds"] >= readiness["periodSeconds"]
    assert by_kind(base, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
