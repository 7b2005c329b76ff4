"""The deployment files in cluster/: every manifest parses, and the fields that a broken deploy hides in
agree with each other and with the code (image, Ray version, head and GPU resources, entrypoint, mounted
job file, schedule, head service address, no credentials). No Ray, no cluster, no network.
"""
from __future__ import annotations

import math
import re
import shlex
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline.spec import load_job

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"


def _load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in _load(path)]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in cluster/kuberay, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def raycluster(k8s):
    return one(k8s, "RayCluster")


@pytest.fixture(scope="module")
def rayjob(k8s):
    return one(k8s, "RayJob")


@pytest.fixture(scope="module")
def cronjob(k8s):
    return one(k8s, "CronJob")


@pytest.fixture(scope="module")
def configmap(k8s):
    return one(k8s, "ConfigMap")


@pytest.fixture(scope="module")
def job_spec(configmap):
    (text,) = configmap["data"].values()
    return load_job(yaml.safe_load(text))


@pytest.fixture(scope="module")
def ray_up():
    (doc,) = _load(CLUSTER / "ray-up.yaml")
    return doc


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def images(node) -> list[str]:
    """Every `image:` value under a parsed manifest."""
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) else []
        return found + [i for v in node.values() for i in images(v)]
    if isinstance(node, list):
        return [i for v in node for i in images(v)]
    return []


def gpu_group(cluster_spec: dict) -> dict:
    (group,) = [g for g in cluster_spec["workerGroupSpecs"] if g["groupName"] == "gpu-workers"]
    return group


def gpus_per_worker(cluster_spec: dict) -> int:
    (container,) = containers(gpu_group(cluster_spec)["template"])
    return int(container["resources"]["limits"]["nvidia.com/gpu"])


def job_gpu_demand(spec) -> int:
    """GPUs the job asks for when both actor pools are at their largest (fractions of a stage pack)."""
    return sum(math.ceil(stage.resources.replica_range[1] * stage.resources.num_gpus)
               for stage in (spec.sample, spec.decode))


def _pod_templates(doc: dict) -> list[dict]:
    """The pod templates of a RayCluster, a RayJob (its cluster) or a CronJob."""
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        cluster = spec
    elif doc["kind"] == "RayJob":
        cluster = spec["rayClusterSpec"]
    elif doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    else:
        return []
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def mounted_file(pod_spec: dict, container: dict, path: str, configmaps: dict[str, dict]) -> str | None:
    """The ConfigMap key that the file `path` shows in this container, or None if no ConfigMap shows it."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        folder = mount["mountPath"].rstrip("/")
        source = volumes.get(mount["name"], {}).get("configMap")
        if not path.startswith(folder + "/") or source is None or source["name"] not in configmaps:
            continue
        name = str(PurePosixPath(path).relative_to(folder))
        if "items" in source:  # only the listed keys, each at its own path
            return {item["path"]: item["key"] for item in source["items"]}.get(name)
        return name if name in configmaps[source["name"]]["data"] else None
    return None


# ---------------------------------------------------------------------------------------- every file


def test_every_manifest_parses_and_names_itself():
    paths = sorted(CLUSTER.rglob("*.yaml"))
    assert {p.relative_to(CLUSTER).as_posix() for p in paths} >= {
        "ray-up.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/cronjob.yaml",
        "kuberay/job-configmap.yaml"}
    for path in paths:
        docs = _load(path)
        assert docs, f"{path}: empty"
        if path.parent == KUBERAY:
            for doc in docs:
                assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), path


def test_one_tagged_image_everywhere(k8s):
    found = {i for doc in k8s for i in images(doc)}
    assert len(found) == 1, f"the manifests use different images: {sorted(found)}"
    (image,) = found
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"{image}: no tag"
    assert tag != "latest", f"{image}: a moving tag; pin a version"
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert tag.startswith(version), f"{image}: tag should start with the project version {version}"


def test_ray_and_torch_versions_agree(raycluster, rayjob, ray_up):
    """KubeRay runs the image's Ray, which must be rayVersion; ray up installs the same pins."""
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    arg = dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile, re.M))
    assert '"ray[default,data]==${RAY_VERSION}"' in dockerfile and '"torch==${TORCH_VERSION}"' in dockerfile
    assert raycluster["spec"]["rayVersion"] == rayjob["spec"]["rayClusterSpec"]["rayVersion"] == arg["RAY_VERSION"]
    setup = "\n".join(ray_up["setup_commands"])
    assert f'"ray[default,data]=={arg["RAY_VERSION"]}"' in setup
    assert f'"torch=={arg["TORCH_VERSION"]}"' in setup


# A credential's name followed by a value that is not a shell variable ("$AWS_SECRET_ACCESS_KEY").
CREDENTIAL_VALUE = re.compile(
    r"(?i)(aws_secret_access_key|aws_session_token|hf_token)[\"']?\s*[:=]\s*[\"']?(?!\$)[A-Za-z0-9/+=_-]{8,}")


def test_credential_pattern():
    assert CREDENTIAL_VALUE.search("AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMIK7MDENGbPxRfiCY")
    assert CREDENTIAL_VALUE.search("--from-literal=HF_TOKEN=hf_abcdefghijklmnop")
    assert not CREDENTIAL_VALUE.search('--from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"')


def test_no_credentials_in_any_file(k8s):
    assert not [d for d in k8s if d["kind"] == "Secret"], "create the Secret with kubectl, not in a manifest"
    for path in [p for p in CLUSTER.rglob("*") if p.is_file()]:
        text = path.read_text()
        assert not re.search(r"\bAKIA[0-9A-Z]{16}\b", text), f"{path}: an AWS access key id"
        assert not CREDENTIAL_VALUE.search(text), f"{path}: a credential value"
    for doc in k8s:
        for pod in _pod_templates(doc):
            for c in containers(pod):
                for env in c.get("env", []):
                    if re.search(r"(?i)secret|token|password|key", env["name"]):
                        assert "value" not in env, f"{env['name']}: use valueFrom.secretKeyRef"
                for source in c.get("envFrom", []):
                    assert set(source) <= {"secretRef", "configMapRef", "prefix"}


# ---------------------------------------------------------------------------------------- RayCluster


@pytest.mark.parametrize("owner", ["raycluster", "rayjob"])
def test_head_takes_no_work_and_serves_the_jobs_api(owner, request):
    doc = request.getfixturevalue(owner)
    cluster = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    (container,) = containers(head["template"])
    assert {p["containerPort"] for p in container["ports"]} >= {6379, 8265, 10001}
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


@pytest.mark.parametrize("owner", ["raycluster", "rayjob"])
def test_gpu_worker_group_asks_kubernetes_and_ray_for_the_same_gpus(owner, request):
    doc = request.getfixturevalue(owner)
    cluster = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    group = gpu_group(cluster)
    (container,) = containers(group["template"])
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits == requests, "requests equal limits: Ray sizes itself from the limits"
    gpus = int(limits["nvidia.com/gpu"])
    assert gpus >= 1
    assert group["rayStartParams"]["num-gpus"] == str(gpus)
    assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    assert group["maxReplicas"] >= 1


def test_pods_get_credentials_from_the_secret(raycluster):
    for pod in _pod_templates(raycluster):
        (container,) = containers(pod)
        assert {"secretRef": {"name": "rushes-credentials"}} in container["envFrom"]


# ---------------------------------------------------------------------------------------- RayJob


def test_rayjob_brings_the_same_cluster_as_raycluster(raycluster, rayjob):
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"], \
        "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml's spec"
    assert "clusterSelector" not in rayjob["spec"]


def test_rayjob_runs_the_job_file_mounted_from_the_configmap(rayjob, configmap):
    spec = rayjob["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["rushes", "run"] and len(argv) == 3, spec["entrypoint"]
    path = argv[2]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]  # the driver runs on the head
    (container,) = containers(head)
    key = mounted_file(head["spec"], container, path, {configmap["metadata"]["name"]: configmap})
    assert key in configmap["data"], f"{path} is not mounted from ConfigMap {configmap['metadata']['name']}"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    assert 0 <= spec["backoffLimit"] <= 2 and spec["submitterConfig"]["backoffLimit"] >= 0


# ---------------------------------------------------------------------------------------- CronJob

_CRON_FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(), 4: "sun mon tue wed thu fri sat".split()}


def valid_cron(expr: str) -> bool:
    fields = expr.split()
    if len(fields) != 5:
        return False

    def number(i: int, s: str) -> int:
        if i in _NAMES and s.lower() in _NAMES[i]:
            return _NAMES[i].index(s.lower()) + (1 if i == 3 else 0)
        return int(s)

    for i, (field, (lo, hi)) in enumerate(zip(fields, _CRON_FIELDS)):
        for part in field.split(","):
            m = re.fullmatch(r"(\*|\w+(?:-\w+)?)(?:/(\d+))?", part)
            if not m or (m.group(2) is not None and int(m.group(2)) < 1):
                return False
            if m.group(1) == "*":
                continue
            try:
                bounds = [number(i, s) for s in m.group(1).split("-")]
            except ValueError:
                return False
            if not all(lo <= b <= hi for b in bounds) or bounds != sorted(bounds):
                return False
    return True


def test_cron_validator():
    assert valid_cron("0 2 * * *") and valid_cron("*/15 1-5 * jan-mar mon,fri")
    assert not valid_cron("0 2 * *") and not valid_cron("61 2 * * *") and not valid_cron("0 2 * * * *")


def test_cronjob_is_nightly_and_never_overlaps(cronjob):
    spec = cronjob["spec"]
    assert valid_cron(spec["schedule"]), spec["schedule"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["timeZone"] and spec["startingDeadlineSeconds"] > 0
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] <= 1, "a failed night is resumed by the next one, not retried in a loop"
    # Under Forbid a hung Job blocks every later run: it must end before the next daily schedule.
    assert 0 < job["activeDeadlineSeconds"] < 24 * 3600
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_cronjob_submits_to_the_raycluster_head_and_waits(cronjob, raycluster, configmap):
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = containers(pod)
    argv = container.get("command", []) + container.get("args", [])
    assert argv[:2] == ["rushes", "submit"], argv
    assert "--wait" in argv
    address = argv[argv.index("--address") + 1]
    url = urlsplit(address)
    assert url.scheme == "http" and url.port == 8265, address
    assert url.hostname.split(".")[0] == f"{raycluster['metadata']['name']}-head-svc", \
        f"{address} is not the head service KubeRay creates for RayCluster {raycluster['metadata']['name']}"
    # `rushes submit` uploads its working directory with the job file in it, and the head runs that copy.
    path = argv[2]
    working_dir = argv[argv.index("--working-dir") + 1] if "--working-dir" in argv else container.get("workingDir")
    assert working_dir and PurePosixPath(path).is_relative_to(working_dir), \
        f"{path} must lie inside the working directory that `rushes submit` uploads ({working_dir})"
    assert mounted_file(pod["spec"], container, path, {configmap["metadata"]["name"]: configmap}) in configmap["data"]


# ---------------------------------------------------------------------------------------- job file


def test_job_file_validates_and_asks_for_gpus(job_spec, raycluster):
    assert job_spec.manifest.startswith("s3://") and job_spec.output.startswith("s3://")
    assert job_spec.sample.resources.num_gpus >= 1
    assert job_spec.decode.resources.num_gpus > 0
    assert job_spec.sample.resources.replicas == "1..8"  # the min..max range: Ray Data scales the pool
    assert not job_spec.storage_options.get("key") and not job_spec.storage_options.get("secret")
    # The cluster can grow to what both pools ask for at their largest, and no further.
    cluster = raycluster["spec"]
    capacity = gpu_group(cluster)["maxReplicas"] * gpus_per_worker(cluster)
    assert job_gpu_demand(job_spec) == capacity
    # GPU pods start from zero: the job must wait for one longer than a node takes to come up.
    assert gpu_group(cluster)["minReplicas"] > 0 or job_spec.ray.resource_wait_s >= 300


# ---------------------------------------------------------------------------------------- ray up


def test_ray_up_head_takes_no_work_and_workers_have_gpus(ray_up, job_spec):
    types = ray_up["available_node_types"]
    assert {"cluster_name", "provider", "head_node_type", "setup_commands", "file_mounts"} <= set(ray_up)
    assert ray_up["provider"]["type"] == "aws"
    head = types[ray_up["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    workers = [t for name, t in types.items() if name != ray_up["head_node_type"]]
    (gpu,) = [t for t in workers if t["resources"].get("GPU", 0) >= 1]
    assert gpu["resources"]["CPU"] >= 1
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= ray_up["max_workers"]
    assert gpu["max_workers"] * gpu["resources"]["GPU"] >= job_gpu_demand(job_spec)
    assert head["node_config"]["InstanceType"] and gpu["node_config"]["InstanceType"]


def test_ray_up_installs_the_project_and_mounts_job_files(ray_up):
    mounts = ray_up["file_mounts"]
    (source,) = [remote for remote, local in mounts.items() if local in (".", "./")]
    assert any("pip install" in c and source.replace("/home/ubuntu", "~") in c.replace("/home/ubuntu", "~")
               for c in ray_up["setup_commands"])
    assert any(remote != source for remote in mounts), "no mount for the job files"
    start = " ".join(ray_up["head_start_ray_commands"])
    assert "--head" in start and "--autoscaling-config" in start
