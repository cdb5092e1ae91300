"""Offline checks of cluster configs: Ray cluster-launcher YAML and KubeRay RayCluster.

``ray up`` and ``kubectl apply`` find many mistakes only after minutes of provisioning
(or never: a worker type with ``min_workers`` above ``max_workers`` is accepted). This
module runs Ray's own config preparation and JSON schema offline, lists every schema
error at once, and adds what Ray does not check: per-type worker limits, GPU resources
on GPU instance types, and credentials written into the file.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from mtkd.errors import ConfigError, MtkdError, Problem

# Instance families with NVIDIA GPUs, and the GPU count of the sizes mtkd documents.
_GPU_FAMILY = re.compile(r"^(p\d+[a-z]*|g\d+[a-z]*|gr\d+[a-z]*)\.", re.IGNORECASE)
GPUS_PER_INSTANCE = {
    "p3.2xlarge": 1, "p3.8xlarge": 4, "p3.16xlarge": 8, "p3dn.24xlarge": 8,
    "g4dn.xlarge": 1, "g4dn.12xlarge": 4, "g5.xlarge": 1, "g5.12xlarge": 4,
    "p4d.24xlarge": 8, "p5.48xlarge": 8,
}
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


def cluster_problems(path: str | Path) -> list[Problem]:
    docs = _load(Path(path))
    problems: list[Problem] = []
    for i, doc in enumerate(docs):
        problems += _credential_problems(doc, f"document {i + 1}" if len(docs) > 1 else "")
    ray_clusters = [d for d in docs if isinstance(d, dict) and d.get("kind") == "RayCluster"]
    if ray_clusters:
        for cr in ray_clusters:
            problems += kuberay_problems(cr)
    elif len(docs) == 1 and isinstance(docs[0], dict) and "provider" in docs[0]:
        problems += launcher_problems(docs[0])
    else:
        problems.append(Problem("file", "is neither a Ray cluster-launcher config (no "
                                "`provider`) nor a KubeRay manifest (no `kind: RayCluster`)",
                                "see cluster/aws-v100.yaml or cluster/kuberay.yaml"))
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
        market = node_config.get("InstanceMarketOptions")
        if market is not None and (not isinstance(market, dict)
                                   or market.get("MarketType") not in ("spot", "capacity-block")):
            problems.append(Problem(f"{where}.node_config.InstanceMarketOptions",
                                    f"{market!r} is not a valid market option",
                                    "use {MarketType: spot}, or drop it for on-demand"))
    return problems


# ------------------------------------------------------------------ KubeRay


def kuberay_problems(cr: dict[str, Any]) -> list[Problem]:
    """Problems of a RayCluster: structure mtkd relies on, then Ray's derived config."""
    name = (cr.get("metadata") or {}).get("name", "?")
    at = f"RayCluster {name}"
    problems: list[Problem] = []
    if cr.get("apiVersion") != "ray.io/v1":
        problems.append(Problem(f"{at}: apiVersion", f"is {cr.get('apiVersion')!r}",
                                "use ray.io/v1 (KubeRay 1.0+)"))
    spec = cr.get("spec")
    if not isinstance(spec, dict):
        return [*problems, Problem(f"{at}: spec", "is missing", "add spec with headGroupSpec "
                                   "and workerGroupSpecs")]
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(Problem(f"{at}: spec.enableInTreeAutoscaling", "is not true, so GPU "
                                "pods are never added or removed", "set it to true"))
    if not isinstance(spec.get("headGroupSpec"), dict):
        problems.append(Problem(f"{at}: spec.headGroupSpec", "is missing",
                                "add the head group"))
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        problems.append(Problem(f"{at}: spec.workerGroupSpecs", "is missing or empty",
                                "add a GPU worker group"))
        groups = []
    pod_specs = [("headGroupSpec", spec.get("headGroupSpec"))]
    pod_specs += [(f"workerGroupSpecs.{i}", g) for i, g in enumerate(groups)]
    gpu_groups = 0
    for where, group in pod_specs:
        where = f"{at}: spec.{where}"
        if not isinstance(group, dict):
            continue
        containers = (((group.get("template") or {}).get("spec") or {}).get("containers")
                      or [])
        if not containers:
            problems.append(Problem(f"{where}.template.spec.containers", "is empty",
                                    "add the Ray container with the mtkd image"))
            continue
        if not containers[0].get("image"):
            problems.append(Problem(f"{where}.template.spec.containers.0.image", "is missing",
                                    "use an image with Ray 2.60 and mtkd installed"))
        if not where.endswith("headGroupSpec"):
            if _group_gpus(group, containers[0]) > 0:
                gpu_groups += 1
            low, high = group.get("minReplicas", 0), group.get("maxReplicas")
            if isinstance(low, int) and isinstance(high, int) and low > high:
                problems.append(Problem(f"{where}.minReplicas", f"is {low}, above "
                                        f"maxReplicas {high}", f"set minReplicas <= {high}"))
            if not group.get("groupName"):
                problems.append(Problem(f"{where}.groupName", "is missing", "name the group"))
    if groups and not gpu_groups:
        problems.append(Problem(f"{at}: spec.workerGroupSpecs", "has no GPU group (no "
                                "nvidia.com/gpu limit), so GPU work never runs",
                                "add limits: {nvidia.com/gpu: 1} to a worker group"))
    if problems:
        return problems
    return _derived_problems(cr, at)


def _group_gpus(group: dict[str, Any], container: dict[str, Any]) -> float:
    if "GPU" in (group.get("resources") or {}):
        return float(group["resources"]["GPU"])
    if "num-gpus" in (group.get("rayStartParams") or {}):
        return float(group["rayStartParams"]["num-gpus"])
    limits = (container.get("resources") or {}).get("limits") or {}
    return sum(float(v) for k, v in limits.items() if str(k).endswith("gpu"))


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
    import difflib

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
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "RayCluster":
            groups = doc["spec"].get("workerGroupSpecs", [])
            text = ", ".join(f"{g['groupName']} {g.get('minReplicas', 0)}-{g['maxReplicas']}"
                             for g in groups)
            return f"KubeRay RayCluster {doc['metadata'].get('name')}: worker groups {text}"
    config = docs[0]
    types = config["available_node_types"]
    workers = [f"{n} ({(t.get('node_config') or {}).get('InstanceType', '?')}, "
               f"GPU {t.get('resources', {}).get('GPU', 0)})"
               for n, t in types.items() if n != config.get("head_node_type")]
    return (f"{config['provider']['type']} cluster {config.get('cluster_name')}: head "
            f"{config.get('head_node_type')}, max_workers {config.get('max_workers')}, "
            f"{len(workers)} worker type(s): {', '.join(workers)}")


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
