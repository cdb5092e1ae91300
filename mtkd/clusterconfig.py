"""Offline checks of cluster configs: Ray cluster-launcher YAML and KubeRay manifests.

``ray up`` and ``kubectl apply`` find many mistakes only after minutes of provisioning
(or never: a worker type with ``min_workers`` above ``max_workers`` is accepted, and
Kubernetes silently drops unknown fields of a custom resource). This module lists every
problem at once:

* cluster launcher: Ray's own config preparation and JSON schema, then what Ray does not
  check: per-type worker limits, GPU resources against the instance type, open-driver AMIs
  or CUDA 13 images on Volta GPUs, credentials written into the file;
* KubeRay ``RayCluster`` and ``RayJob`` (ray.io/v1): the CRDs' own OpenAPI schema, vendored
  from a pinned KubeRay release (``mtkd/cluster_schemas/``), with unknown fields as errors
  and did-you-mean hints, then mtkd's checks (autoscaling, a GPU group, replica limits)
  and Ray's derived autoscaling config.
"""

from __future__ import annotations

import copy
import difflib
import functools
import gzip
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from mtkd.errors import ConfigError, MtkdError, Problem

# Instance families with NVIDIA GPUs, and the GPUs of the sizes mtkd documents:
# type -> (GPU count, GPU model, CUDA compute capability). The capability decides what
# `precision: auto` resolves to there (mtkd.precision): >= 8.0 bf16, 7.x fp16 with loss
# scaling. Sources: the EC2 accelerated-computing instance specifications.
_GPU_FAMILY = re.compile(r"^(p\d+[a-z]*|g\d+[a-z]*|gr\d+[a-z]*)\.", re.IGNORECASE)
_V100, _T4, _A10G, _L4, _A100, _H100 = (("V100", "7.0"), ("T4", "7.5"), ("A10G", "8.6"),
                                        ("L4", "8.9"), ("A100", "8.0"), ("H100", "9.0"))
INSTANCE_GPUS: dict[str, tuple[int, str, str]] = {
    "p3.2xlarge": (1, *_V100), "p3.8xlarge": (4, *_V100), "p3.16xlarge": (8, *_V100),
    "p3dn.24xlarge": (8, *_V100),
    "g4dn.xlarge": (1, *_T4), "g4dn.2xlarge": (1, *_T4), "g4dn.12xlarge": (4, *_T4),
    "g5.xlarge": (1, *_A10G), "g5.2xlarge": (1, *_A10G), "g5.4xlarge": (1, *_A10G),
    "g5.8xlarge": (1, *_A10G), "g5.12xlarge": (4, *_A10G), "g5.24xlarge": (4, *_A10G),
    "g5.48xlarge": (8, *_A10G),
    "g6.xlarge": (1, *_L4), "g6.2xlarge": (1, *_L4), "g6.4xlarge": (1, *_L4),
    "g6.8xlarge": (1, *_L4), "g6.12xlarge": (4, *_L4), "g6.24xlarge": (4, *_L4),
    "g6.48xlarge": (8, *_L4),
    "p4d.24xlarge": (8, *_A100), "p4de.24xlarge": (8, *_A100),
    "p5.48xlarge": (8, *_H100),
}
GPUS_PER_INSTANCE = {name: spec[0] for name, spec in INSTANCE_GPUS.items()}
ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    "m5.2xlarge": 0.384,  # the head node of every aws-*.yaml
    "p3.2xlarge": 3.06, "p3.8xlarge": 12.24, "p3.16xlarge": 24.48,
    "g5.xlarge": 1.006,  # a third-party pricing page quoting us-east-1, June 2026
}
"""On-demand $/hour, us-east-1, Linux: only the prices cluster/README.md could check (its
"Prices" table, with sources); the other instance types are not verified and are left
out, so an estimate for them asks for a price (``mtkd estimate --usd-per-gpu-hour``)."""
# GPUs before Turing (Volta, Pascal, ...) have no GSP: NVIDIA's open kernel modules cannot
# drive them, and CUDA 13 / driver branches after R580 dropped them.
_PRE_TURING = re.compile(r"^(p2|p3|p3dn|g3|g3s)\.", re.IGNORECASE)
_OPEN_DRIVER_AMI = re.compile(r"(^|[-/_ .(])(oss|open)([-/_ .)]|$)", re.IGNORECASE)
_CUDA13_IMAGE = re.compile(r"cu(da)?-?13", re.IGNORECASE)

# Keys (and k8s env names) that hold credentials; none belongs in a cluster config.
_CREDENTIAL_KEY = re.compile(
    r"(access_?key|secret|session_?token|password|passwd|private_?key|credentials?$)",
    re.IGNORECASE)
_CREDENTIAL_VALUE = re.compile(
    r"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"  # an AWS access key id
    r"|(?i:aws_(secret_access_key|access_key_id|session_token)(\s*[=:]|\s+\S))")  # set in a command
# Keys that name a secret rather than hold one (k8s references, the local ssh key's path).
_NOT_CREDENTIALS = {"secretkeyref", "secretref", "secretname", "ssh_private_key", "keyname"}
_CREDENTIAL_FIX = ("remove it; nodes get S3 access from the IAM instance profile (AWS) or "
                   "the IRSA service account (KubeRay), never from keys in the config")


def validate_cluster_yaml(path: str | Path) -> list[str]:
    """Every problem found in a cluster-launcher YAML or a KubeRay manifest (empty: valid)."""
    return [str(p) for p in cluster_problems(path)]


def check_cluster_yaml(path: str | Path) -> str:
    """Raise :class:`ConfigError` listing every problem, or return a one-line summary."""
    problems = cluster_problems(path)
    if problems:
        raise ConfigError(problems, str(path))
    return _summary(_load(Path(path)))


KUBERAY_KINDS = ("RayCluster", "RayJob")


def cluster_problems(path: str | Path) -> list[Problem]:
    path = Path(path)
    docs = _load(path)
    lines = _line_maps(path)
    problems: list[Problem] = []
    for i, doc in enumerate(docs):
        problems += _credential_problems(doc, f"document {i + 1}" if len(docs) > 1 else "")
    kube = [(i, d) for i, d in enumerate(docs)
            if isinstance(d, dict) and d.get("kind") in KUBERAY_KINDS]
    if kube:
        for i, cr in kube:
            where = _Where(path, lines[i] if i < len(lines) else {})
            problems += kuberay_problems(cr, where)
    elif len(docs) == 1 and isinstance(docs[0], dict) and "provider" in docs[0]:
        problems += launcher_problems(docs[0])
    else:
        problems.append(Problem("file", "is neither a Ray cluster-launcher config (no "
                                "`provider`) nor a KubeRay manifest (no `kind: RayCluster` "
                                "or `kind: RayJob`)",
                                "see cluster/aws-v100.yaml, cluster/kuberay.yaml or "
                                "cluster/kuberay-rayjob.yaml"))
    return problems


# ------------------------------------------------------------------ cluster launcher


def launcher_problems(config: dict[str, Any]) -> list[Problem]:
    """Problems of a ``ray up`` config: Ray's preparation and schema, then mtkd's checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    problems: list[Problem] = []
    provider = config.get("provider")
    if not isinstance(provider, dict) or "type" not in provider:
        return [Problem("provider", "needs a mapping with `type`", "e.g. provider: {type: "
                        "aws, region: us-east-1}")]
    with _quiet_ray_logs():
        try:
            prepared = prepare_config(copy.deepcopy(config))
        except Exception as err:  # Ray raises bare KeyError, ValueError, AssertionError
            problems.append(Problem("config", f"Ray cannot prepare it: {_err_text(err)}"))
            prepared = copy.deepcopy(config)
    schema_problems = _schema_problems(prepared)
    problems += schema_problems
    if not schema_problems and not problems:
        with _quiet_ray_logs():
            try:
                validate_config(prepared)
            except Exception as err:
                problems.append(Problem("config", _err_text(err)))
    problems += _node_type_problems(config)
    return problems


def _node_type_problems(config: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    types = config.get("available_node_types")
    if not isinstance(types, dict) or not types:
        return [Problem("available_node_types", "is missing or empty",
                        "declare a head type and the GPU worker types")]
    head = config.get("head_node_type")
    if head not in types:
        problems.append(Problem("head_node_type", f"{head!r} is not one of the "
                                f"available_node_types ({', '.join(types)})",
                                "name the head's node type"))
    global_max = config.get("max_workers")
    for name, spec in types.items():
        where = f"available_node_types.{name}"
        if not isinstance(spec, dict):
            continue
        low, high = spec.get("min_workers", 0), spec.get("max_workers")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            problems.append(Problem(f"{where}.min_workers", f"is {low}, above max_workers "
                                    f"{high}", f"set min_workers <= {high}"))
        if (name != head and isinstance(low, int) and isinstance(global_max, int)
                and low > global_max):
            problems.append(Problem(f"{where}.min_workers", f"is {low}, above the global "
                                    f"max_workers {global_max}", "lower it or raise max_workers"))
        node_config = spec.get("node_config") if isinstance(spec.get("node_config"), dict) else {}
        resources = spec.get("resources") if isinstance(spec.get("resources"), dict) else {}
        instance = str(node_config.get("InstanceType", ""))
        if _GPU_FAMILY.match(instance):
            gpus = resources.get("GPU")
            expected = GPUS_PER_INSTANCE.get(instance)
            if not gpus:
                problems.append(Problem(f"{where}.resources", f"{instance} is a GPU instance "
                                        "but the type advertises no GPU, so work asking for "
                                        "GPUs never scales it up",
                                        f"add GPU: {expected or 'N'} to resources"))
            elif expected is not None and gpus != expected:
                problems.append(Problem(f"{where}.resources.GPU", f"is {gpus} but {instance} "
                                        f"has {expected}", f"set GPU: {expected}"))
        elif resources.get("GPU") and instance:
            problems.append(Problem(f"{where}.resources.GPU", f"is {resources['GPU']} but "
                                    f"{instance} has no GPU", "remove GPU or pick a GPU "
                                    "instance type (p3.*)"))
        problems += _volta_problems(config, name, spec, instance, where)
        market = node_config.get("InstanceMarketOptions")
        if market is not None and (not isinstance(market, dict)
                                   or market.get("MarketType") not in ("spot", "capacity-block")):
            problems.append(Problem(f"{where}.node_config.InstanceMarketOptions",
                                    f"{market!r} is not a valid market option",
                                    "use {MarketType: spot}, or drop it for on-demand"))
    return problems


def _volta_problems(config: dict[str, Any], name: str, spec: dict[str, Any], instance: str,
                    where: str) -> list[Problem]:
    """Pre-Turing GPUs (V100 and older) need the proprietary driver and a CUDA 12 build."""
    if not _PRE_TURING.match(instance):
        return []
    problems = []
    image_id = str((spec.get("node_config") or {}).get("ImageId", ""))
    if _OPEN_DRIVER_AMI.search(image_id):
        problems.append(Problem(
            f"{where}.node_config.ImageId", f"{image_id} is an open-kernel-module (OSS) "
            f"driver AMI, which cannot drive the {instance}'s pre-Turing GPUs: the node would "
            "fail its GPU check and be replaced, and billed, in a loop",
            "use an AMI with NVIDIA's proprietary driver of branch R580 or older (see "
            "cluster/README.md, 'V100 image')"))
    docker = config.get("docker") if isinstance(config.get("docker"), dict) else {}
    node_docker = spec.get("docker") if isinstance(spec.get("docker"), dict) else {}
    image = (node_docker.get("worker_image") or docker.get("worker_image")
             or docker.get("image") or "")
    if name == config.get("head_node_type"):
        image = node_docker.get("head_image") or docker.get("head_image") or image
    if image and _CUDA13_IMAGE.search(str(image)):
        problems.append(Problem(
            f"{where}: docker image", f"{image} looks like a CUDA 13 build, which dropped "
            f"the {instance}'s GPUs (sm_70)", "build cluster/Dockerfile with a CUDA 12 "
            "torch (TORCH_INDEX=https://download.pytorch.org/whl/cu126)"))
    return problems


def instance_gpu_summary(instance: str) -> str:
    """E.g. "1 x V100 (compute capability 7.0, precision auto -> fp16)"; "" if unknown."""
    spec = INSTANCE_GPUS.get(instance)
    if spec is None:
        return ""
    count, model, capability = spec
    return (f"{count} x {model} (compute capability {capability}, precision auto -> "
            f"{auto_precision(capability)})")


def auto_precision(capability: str) -> str:
    """What ``precision: auto`` resolves to on a CUDA GPU of this compute capability."""
    from mtkd.precision import DeviceInfo, resolve_precision

    device = DeviceInfo(type="cuda", name="gpu", capability=capability,
                        native_bf16=int(capability.split(".")[0]) >= 8)
    return resolve_precision("auto", device).precision


# ------------------------------------------------------------------ KubeRay


class _Where:
    """Turns a schema path into ``file:line`` of the manifest (empty when unknown)."""

    def __init__(self, path: Path | None = None, lines: dict[tuple, int] | None = None):
        self.path, self.lines = path, lines or {}

    def __call__(self, *parts: Any) -> str:
        key = tuple(str(p) for p in parts)
        while key:
            if key in self.lines:
                return f"{self.path}:{self.lines[key]}" if self.path else ""
            key = key[:-1]
        return ""


def kuberay_problems(cr: dict[str, Any], where: _Where | None = None) -> list[Problem]:
    """Problems of a RayCluster or RayJob: the CRD schema, mtkd's checks, Ray's view."""
    where = where or _Where()
    kind = cr.get("kind")
    name = (cr.get("metadata") or {}).get("name", "?")
    at = f"{kind} {name}"
    problems: list[Problem] = []
    if cr.get("apiVersion") != "ray.io/v1":
        problems.append(Problem(f"{at}: apiVersion", f"is {cr.get('apiVersion')!r}",
                                "use ray.io/v1 (KubeRay 1.0+)", where("apiVersion")))
    schema_problems, renamed = _crd_problems(cr, kind, at, where)
    problems += schema_problems
    spec = cr.get("spec")
    if not isinstance(spec, dict):
        return [*problems, Problem(f"{at}: spec", "is missing", "add spec with headGroupSpec "
                                   "and workerGroupSpecs" if kind == "RayCluster" else
                                   "add spec with entrypoint and rayClusterSpec")]
    checks: list[Problem] = []
    cluster_spec: Any = spec
    prefix = "spec"
    if kind == "RayJob":
        cluster_spec, prefix = spec.get("rayClusterSpec"), "spec.rayClusterSpec"
        checks += _rayjob_checks(spec, at, where)
    if isinstance(cluster_spec, dict):
        checks += _raycluster_checks(cluster_spec, at, prefix, where)
    # A misspelt key is reported once, as the unknown key with its fix, not again as the
    # setting it failed to set.
    problems += [p for p in checks if p.path.split(": ", 1)[-1] not in renamed]
    if problems or not isinstance(cluster_spec, dict):
        return problems
    derived_cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                  "metadata": copy.deepcopy(cr.get("metadata") or {}),
                  "spec": copy.deepcopy(cluster_spec)}
    return _derived_problems(derived_cr, at)


def _rayjob_checks(spec: dict[str, Any], at: str, where: _Where) -> list[Problem]:
    problems: list[Problem] = []
    mode = spec.get("submissionMode", "K8sJobMode")
    if not spec.get("entrypoint") and mode != "InteractiveMode":
        problems.append(Problem(f"{at}: spec.entrypoint", "is missing, so the job runs "
                                "nothing", "e.g. python /home/ray/mtkd/jobs/pipeline.py "
                                "--config ... storage_path=s3://...", where("spec")))
    if "rayClusterSpec" not in spec and "clusterSelector" not in spec:
        problems.append(Problem(f"{at}: spec.rayClusterSpec", "is missing (and no "
                                "clusterSelector names an existing cluster)",
                                "add the cluster the job runs on", where("spec")))
    if "rayClusterSpec" in spec and spec.get("shutdownAfterJobFinishes") is not True:
        problems.append(Problem(f"{at}: spec.shutdownAfterJobFinishes", "is not true, so "
                                "the job's RayCluster (its head pod, and GPU pods until "
                                "they idle out) keeps running, and billing, after the job",
                                "set shutdownAfterJobFinishes: true (and "
                                "ttlSecondsAfterFinished to keep logs a while)",
                                where("spec", "shutdownAfterJobFinishes")))
    return problems


def _raycluster_checks(spec: dict[str, Any], at: str, prefix: str,
                       where: _Where) -> list[Problem]:
    """What mtkd needs of a cluster spec: autoscaling, a head, a GPU group, sane limits."""
    parts = prefix.split(".")
    problems: list[Problem] = []
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(Problem(f"{at}: {prefix}.enableInTreeAutoscaling", "is not true, so "
                                "GPU pods are never added or removed", "set it to true",
                                where(*parts, "enableInTreeAutoscaling")))
    if not isinstance(spec.get("headGroupSpec"), dict):
        problems.append(Problem(f"{at}: {prefix}.headGroupSpec", "is missing",
                                "add the head group", where(*parts)))
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        problems.append(Problem(f"{at}: {prefix}.workerGroupSpecs", "is missing or empty",
                                "add a GPU worker group", where(*parts)))
        groups = []
    pod_specs: list[tuple[str, Any]] = [("headGroupSpec", spec.get("headGroupSpec"))]
    pod_specs += [(f"workerGroupSpecs.{i}", g) for i, g in enumerate(groups)]
    gpu_groups = 0
    for rel, group in pod_specs:
        here = f"{at}: {prefix}.{rel}"
        path = (*parts, *rel.split("."))
        if not isinstance(group, dict):
            continue
        template_spec = (group.get("template") or {}).get("spec") or {}
        containers = template_spec.get("containers") or [] if isinstance(template_spec,
                                                                        dict) else []
        if not containers or not isinstance(containers[0], dict):
            problems.append(Problem(f"{here}.template.spec.containers", "is empty",
                                    "add the Ray container with the mtkd image",
                                    where(*path)))
            continue
        if not containers[0].get("image"):
            problems.append(Problem(f"{here}.template.spec.containers.0.image", "is missing",
                                    "use an image with Ray 2.60 and mtkd installed",
                                    where(*path, "template", "spec", "containers", "0")))
        if rel != "headGroupSpec":
            if _group_gpus(group, containers[0]) > 0:
                gpu_groups += 1
            low, high = group.get("minReplicas", 0), group.get("maxReplicas")
            if isinstance(low, int) and isinstance(high, int) and low > high:
                problems.append(Problem(f"{here}.minReplicas", f"is {low}, above "
                                        f"maxReplicas {high}", f"set minReplicas <= {high}",
                                        where(*path, "minReplicas")))
            if not group.get("groupName"):
                problems.append(Problem(f"{here}.groupName", "is missing", "name the group",
                                        where(*path)))
    if groups and not gpu_groups:
        problems.append(Problem(f"{at}: {prefix}.workerGroupSpecs", "has no GPU group (no "
                                "nvidia.com/gpu limit), so GPU work never runs",
                                "add limits: {nvidia.com/gpu: 1} to a worker group",
                                where(*parts, "workerGroupSpecs")))
    return problems


def _group_gpus(group: dict[str, Any], container: dict[str, Any]) -> float:
    try:
        if "GPU" in (group.get("resources") or {}):
            return float(group["resources"]["GPU"])
        if "num-gpus" in (group.get("rayStartParams") or {}):
            return float(group["rayStartParams"]["num-gpus"])
        limits = (container.get("resources") or {}).get("limits") or {}
        return sum(float(v) for k, v in limits.items() if str(k).endswith("gpu"))
    except (TypeError, ValueError):  # a malformed quantity; the schema check reports it
        return 0.0


def _derived_problems(cr: dict[str, Any], at: str) -> list[Problem]:
    """What Ray's KubeRay autoscaler would make of the CR, checked against the schema."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = copy.deepcopy(cr)
    cr.setdefault("metadata", {}).setdefault("namespace", "default")  # set by kubectl -n
    with _quiet_ray_logs():
        try:
            derived = _derive_autoscaling_config_from_ray_cr(cr)
        except Exception as err:
            derived = None
            error = err
    if derived is None:
        found = [Problem(f"{at}", f"Ray's autoscaler cannot read it: {_err_text(error)}")]
        return found
    return [Problem(f"{at}: {p.path}", p.message, p.fix) for p in _schema_problems(derived)]


# The KubeRay CRD schemas, vendored from one release (mtkd/cluster_schemas/README.md).
_KUBERAY_SCHEMAS = Path(__file__).parent / "cluster_schemas" / "kuberay-crds.json.gz"


@functools.cache
def kuberay_crd_bundle() -> dict[str, Any]:
    """The vendored bundle: ``kuberay_tag``, ``sources``, ``sha256`` and ``schemas``."""
    return json.loads(gzip.decompress(_KUBERAY_SCHEMAS.read_bytes()))


@functools.cache
def kuberay_schema(kind: str) -> dict[str, Any]:
    """The CRD's openAPIV3Schema of ``kind``, closed the way Kubernetes prunes.

    Kubernetes drops (``kubectl apply``) or rejects (server-side field validation) fields
    a structural schema does not declare, unless the object says
    ``x-kubernetes-preserve-unknown-fields``; a typo therefore silently loses a setting.
    Here every object with ``properties`` and no ``additionalProperties`` is closed, and
    ``nullable`` becomes an explicit null type.
    """
    return _closed(kuberay_crd_bundle()["schemas"][kind])


def _closed(node: Any) -> Any:
    if isinstance(node, list):
        return [_closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: (v if k in ("enum", "default", "example") else _closed(v))
           for k, v in node.items()}
    if "properties" in node:  # property names are data, not schemas
        out["properties"] = {k: _closed(v) for k, v in node["properties"].items()}
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if node.get("nullable") and isinstance(node.get("type"), str):
        out["type"] = [node["type"], "null"]
    return out


@functools.cache
def _crd_validator(kind: str) -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(kuberay_schema(kind))


def _crd_problems(cr: dict[str, Any], kind: str, at: str,
                  where: _Where) -> tuple[list[Problem], set[str]]:
    """Every schema error of the manifest, and the keys a misspelt key was meant to be."""
    problems: list[Problem] = []
    renamed: set[str] = set()
    tag = kuberay_crd_bundle()["kuberay_tag"]
    errors = sorted(_crd_validator(kind).iter_errors(cr),
                    key=lambda e: [str(p) for p in e.absolute_path])
    for err in errors:
        if err.validator == "additionalProperties":
            known = list(err.schema.get("properties") or {})
            for key in err.instance or {}:
                close = difflib.get_close_matches(key, known, n=1)
                if key not in known and close:
                    renamed.add(".".join([*map(str, err.absolute_path), close[0]]))
    for err in errors:
        parts = [str(p) for p in err.absolute_path]
        if err.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", err.message)
            if missing and ".".join([*parts, missing[0]]) in renamed:
                continue  # reported as the misspelt key
        path = ".".join(parts) or "(top level)"
        fix = ""
        line = where(*parts)
        if err.validator == "additionalProperties":
            extra = [k for k in (err.instance or {}) if k not in err.schema.get("properties",
                                                                                {})]
            known = sorted(err.schema.get("properties") or {})
            message = (f"unknown key(s) {', '.join(extra)} (not in the KubeRay {tag} "
                       f"{kind} schema; Kubernetes would drop it)")
            fix = _did_you_mean(extra, known)
            line = where(*parts, extra[0]) if extra else line
        elif err.validator == "enum":
            allowed = [str(v) for v in err.validator_value]
            message = f"{err.instance!r} is not one of {', '.join(allowed)}"
            close = difflib.get_close_matches(str(err.instance), allowed, n=1)
            fix = f"use {close[0]}" if close else f"use one of {', '.join(allowed)}"
        elif err.validator == "anyOf" and all("type" in s for s in err.validator_value):
            types = " or ".join(str(s["type"]) for s in err.validator_value)
            message = f"{err.instance!r} must be {types}"
        elif err.validator == "pattern" and err.schema.get("x-kubernetes-int-or-string"):
            message = f"{err.instance!r} is not a Kubernetes quantity"
            fix = "e.g. 8, 500m, 32Gi"
        else:
            message = err.message
        problems.append(Problem(f"{at}: {path}", message, fix, line))
    return problems, renamed


def _line_maps(path: Path) -> list[dict[tuple, int]]:
    """For each YAML document: (key, index, ...) path -> line number (1-based)."""
    try:
        nodes = list(yaml.compose_all(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, OSError):
        return []
    maps = []
    for node in nodes:
        if node is None:
            continue
        lines: dict[tuple, int] = {}

        def walk(n: Any, at: tuple, lines: dict[tuple, int] = lines) -> None:
            lines.setdefault(at, n.start_mark.line + 1)
            if isinstance(n, yaml.MappingNode):
                for key, value in n.value:
                    child = (*at, str(key.value))
                    lines[child] = key.start_mark.line + 1
                    walk(value, child)
            elif isinstance(n, yaml.SequenceNode):
                for i, item in enumerate(n.value):
                    walk(item, (*at, str(i)))

        walk(node, ())
        maps.append(lines)
    return maps


# ------------------------------------------------------------------ shared


def _schema_problems(config: dict[str, Any]) -> list[Problem]:
    """Every JSON-schema error of Ray's ray-schema.json, not only the first."""
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    problems = []
    for err in sorted(jsonschema.Draft7Validator(schema).iter_errors(config),
                      key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        message = err.message
        fix = ""
        if err.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)' was unexpected", err.message)
            known = sorted((err.schema.get("properties") or {}).keys())
            message = f"unknown key(s) {', '.join(extra) or err.message}"
            fix = _did_you_mean(extra, known)
        problems.append(Problem(where, message, fix))
    return problems


def _did_you_mean(extra: list[str], known: list[str]) -> str:
    hints = []
    for key in extra:
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            hints.append(f"rename {key} to {close[0]}")
    if hints:
        return "; ".join(hints)
    return f"remove it; known keys: {', '.join(known)}" if known else "remove it"


def _credential_problems(node: Any, root: str) -> list[Problem]:
    problems: list[Problem] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            # A k8s env entry {name: AWS_SECRET_ACCESS_KEY, value: ...}: the name says it.
            env_name = value.get("name") if "value" in value else None
            if isinstance(env_name, str) and _CREDENTIAL_KEY.search(env_name):
                problems.append(Problem(path, f"sets {env_name} in plain text",
                                        _CREDENTIAL_FIX))
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                if (_CREDENTIAL_KEY.search(str(key))
                        and str(key).lower() not in _NOT_CREDENTIALS
                        and item not in (None, "", {}, [])
                        and not isinstance(item, bool)):
                    problems.append(Problem(child, "looks like a credential", _CREDENTIAL_FIX))
                else:
                    walk(item, child)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}.{i}" if path else str(i))
        elif isinstance(value, str) and _CREDENTIAL_VALUE.search(value):
            problems.append(Problem(path or "value", "contains an AWS credential or sets one",
                                    _CREDENTIAL_FIX))

    walk(node, root)
    return problems


def _load(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MtkdError(f"cluster config not found: {path} (fix: check the path)") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise MtkdError(f"{path}: not valid YAML: {err}") from None
    if not docs:
        raise MtkdError(f"{path}: is empty (fix: give a cluster-launcher YAML or a KubeRay "
                        "RayCluster manifest)")
    return docs


def _summary(docs: list[Any]) -> str:
    kube = [d for d in docs if isinstance(d, dict) and d.get("kind") in KUBERAY_KINDS]
    if kube:
        return "; ".join(_kuberay_summary(d) for d in kube)
    config = docs[0]
    types = config["available_node_types"]
    workers = []
    for n, t in types.items():
        if n == config.get("head_node_type"):
            continue
        instance = (t.get("node_config") or {}).get("InstanceType", "?")
        gpus = instance_gpu_summary(instance) or f"GPU {t.get('resources', {}).get('GPU', 0)}"
        workers.append(f"{n} ({instance}, {gpus})")
    return (f"{config['provider']['type']} cluster {config.get('cluster_name')}: head "
            f"{config.get('head_node_type')}, max_workers {config.get('max_workers')}, "
            f"{len(workers)} worker type(s): {', '.join(workers)}")


def _kuberay_summary(doc: dict[str, Any]) -> str:
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec", {}) if doc["kind"] == "RayJob" else spec
    groups = cluster.get("workerGroupSpecs", [])
    text = ", ".join(f"{g['groupName']} {g.get('minReplicas', 0)}-{g['maxReplicas']}"
                     for g in groups)
    tag = kuberay_crd_bundle()["kuberay_tag"]
    return (f"KubeRay {doc['kind']} {doc['metadata'].get('name')} (schema {tag}): "
            f"worker groups {text or 'none (clusterSelector)'}")


def _err_text(err: BaseException) -> str:
    if isinstance(err, KeyError):
        return f"missing key {err}"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


@contextmanager
def _quiet_ray_logs() -> Iterator[None]:
    """Silence the autoscaler's INFO chatter while preparing configs."""
    logger = logging.getLogger("ray.autoscaler")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
