"""The shipped cluster configs validate offline; broken copies fail naming every problem."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from mtkd.cli import main
from mtkd.clusterconfig import (
    INSTANCE_GPUS,
    auto_precision,
    cluster_problems,
    kuberay_crd_bundle,
    kuberay_schema,
    validate_cluster_yaml,
)

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
AWS = CLUSTER / "aws-v100.yaml"
AWS_CONFIGS = sorted(CLUSTER.glob("aws-*.yaml"))
KUBERAY = CLUSTER / "kuberay.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
SHIPPED = [*AWS_CONFIGS, KUBERAY, RAYJOB]


def test_every_gpu_type_users_pick_has_a_config() -> None:
    assert {p.name for p in AWS_CONFIGS} == {"aws-v100.yaml", "aws-a10g.yaml", "aws-l4.yaml",
                                             "aws-a100.yaml", "aws-h100.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configs_validate(path: Path, capsys: pytest.CaptureFixture) -> None:
    assert validate_cluster_yaml(path) == []
    assert main(["cluster", "validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {path}")


def test_aws_config_maps_mtkd_requests_onto_v100_node_types() -> None:
    config = yaml.safe_load(AWS.read_text())
    types = config["available_node_types"]
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    gpus = {t["node_config"]["InstanceType"]: t["resources"]["GPU"] for t in workers.values()}
    assert gpus == {"p3.2xlarge": 1, "p3.8xlarge": 4, "p3.16xlarge": 8}
    assert types[config["head_node_type"]]["resources"]["GPU"] == 0
    for name, spec in workers.items():
        assert spec["min_workers"] == 0
        spot = spec["node_config"].get("InstanceMarketOptions") == {"MarketType": "spot"}
        assert spot == name.endswith("-spot")
        assert spec["priority"] == (10 if spot else 0)  # spot first, on-demand fallback
        assert "Arn" in spec["node_config"]["IamInstanceProfile"]
    assert {n.rsplit("-", 1)[1] for n in workers} == {"spot", "ondemand"}
    assert config["idle_timeout_minutes"] > 0


def test_broken_launcher_config_lists_every_problem(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    config = yaml.safe_load(AWS.read_text())
    broken = copy.deepcopy(config)
    broken["idle_timout_minutes"] = 5                      # misspelled top-level key
    types = broken["available_node_types"]
    types["gpu1-spot"].update(min_workers=3, max_workers=1)  # min above max
    types["gpu4-spot"]["resources"] = {"CPU": 32}          # GPU instance without GPU
    types["gpu8-spot"]["resources"]["GPU"] = 4             # wrong GPU count
    types["gpu1-ondemand"]["max_worker"] = 2               # misspelled node-type key
    types["gpu1-ondemand"]["node_config"]["aws_secret_access_key"] = "abc"  # a credential
    broken["setup_commands"].append("export AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP")
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))

    problems = validate_cluster_yaml(path)
    expected = [
        "(top level): unknown key(s) idle_timout_minutes (fix: rename idle_timout_minutes to "
        "idle_timeout_minutes)",
        "available_node_types.gpu1-spot.min_workers: is 3, above max_workers 1",
        "available_node_types.gpu4-spot.resources: p3.8xlarge is a GPU instance but the type "
        "advertises no GPU",
        "available_node_types.gpu8-spot.resources.GPU: is 4 but p3.16xlarge has 8",
        "available_node_types.gpu1-ondemand: unknown key(s) max_worker (fix: rename "
        "max_worker to max_workers)",
        "available_node_types.gpu1-ondemand.node_config.aws_secret_access_key: looks like a "
        "credential",
        f"setup_commands.{len(config['setup_commands'])}: contains an AWS credential",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    assert len(problems) == len(expected), problems
    assert "abc" not in "\n".join(problems)  # never echo a secret

    assert main(["cluster", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {len(expected)} problem(s):" in err
    for text in expected:
        assert text in err


def test_broken_kuberay_manifest_lists_every_problem(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(KUBERAY.read_text()))
    cr = next(d for d in docs if d["kind"] == "RayCluster")
    cr["spec"]["enableInTreeAutoscaling"] = False
    group = cr["spec"]["workerGroupSpecs"][0]
    group.update(minReplicas=3, maxReplicas=1)
    container = group["template"]["spec"]["containers"][0]
    for part in ("limits", "requests"):
        del container["resources"][part]["nvidia.com/gpu"]
    container["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"})
    path = tmp_path / "kuberay.yaml"
    path.write_text(yaml.safe_dump_all(docs))

    problems = [f"{p.path}: {p.message}" for p in cluster_problems(path)]
    text = "\n".join(problems)
    assert "spec.enableInTreeAutoscaling: is not true" in text
    assert "spec.workerGroupSpecs.0.minReplicas: is 3, above maxReplicas 1" in text
    assert "has no GPU group (no nvidia.com/gpu limit)" in text
    assert "sets AWS_SECRET_ACCESS_KEY in plain text" in text
    assert len(problems) == 4, problems


def test_kuberay_secret_references_are_not_credentials(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(KUBERAY.read_text()))
    cr = next(d for d in docs if d["kind"] == "RayCluster")
    container = cr["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["env"] += [{"name": name, "valueFrom": {"secretKeyRef": {"name": "s3",
                                                                     "key": name.lower()}}}
                         for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    path = tmp_path / "kuberay.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    assert validate_cluster_yaml(path) == []


def test_kuberay_config_derived_by_ray_has_the_gpu_group() -> None:
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = next(d for d in yaml.safe_load_all(KUBERAY.read_text()) if d["kind"] == "RayCluster")
    cr["metadata"]["namespace"] = "mtkd"
    derived = _derive_autoscaling_config_from_ray_cr(cr)
    [gpu_group] = [t for n, t in derived["available_node_types"].items() if n != "headgroup"]
    assert gpu_group["resources"]["GPU"] == 1
    assert gpu_group["min_workers"] == 0 and gpu_group["max_workers"] >= 1


def test_files_that_are_not_cluster_configs(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    experiment = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "quickstart.yaml"
    assert validate_cluster_yaml(experiment) == [
        "file: is neither a Ray cluster-launcher config (no `provider`) nor a KubeRay "
        "manifest (no `kind: RayCluster` or `kind: RayJob`) (fix: see cluster/aws-v100.yaml, "
        "cluster/kuberay.yaml or cluster/kuberay-rayjob.yaml)"]
    assert main(["cluster", "validate", str(tmp_path / "missing.yaml")]) == 2
    assert "cluster config not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("provider: [unclosed\n")
    assert main(["cluster", "validate", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


# ------------------------------------------------------------------ launcher configs


def _workers(config: dict) -> dict[str, dict]:
    return {n: t for n, t in config["available_node_types"].items()
            if n != config["head_node_type"]}


@pytest.mark.parametrize("path", AWS_CONFIGS, ids=[p.stem for p in AWS_CONFIGS])
def test_aws_configs_gpu_counts_markets_and_image(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    text = path.read_text()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["GPU"] == 0
    assert "InstanceMarketOptions" not in head["node_config"]  # the head is never spot
    models = set()
    for name, spec in _workers(config).items():
        instance = spec["node_config"]["InstanceType"]
        count, model, _ = INSTANCE_GPUS[instance]
        models.add(model)
        assert spec["resources"]["GPU"] == count, name
        assert spec["min_workers"] == 0
        spot = spec["node_config"].get("InstanceMarketOptions") == {"MarketType": "spot"}
        assert spot == name.endswith("-spot")
        assert spec["priority"] == (10 if spot else 0)
        assert "mtkd-ray-worker" in spec["node_config"]["IamInstanceProfile"]["Arn"]
    assert len(models) == 1, models  # one GPU model per cluster: one precision
    # GPU nodes start from the project's image; nothing installs CUDA torch at boot.
    docker = config["docker"]
    assert docker["image"].endswith("/mtkd:0.1.0-ray2.60-cu126")
    assert "--gpus all" in docker["worker_run_options"]
    assert "--gpus all" not in docker.get("run_options", [])  # the head has no GPU
    commands = [*config.get("setup_commands", []), *config.get("head_setup_commands", []),
                *config.get("worker_setup_commands", []),
                *config.get("initialization_commands", [])]
    assert not [c for c in commands if "pip install" in c], commands
    assert config["file_mounts"] == {}
    assert "docker login" in " ".join(config["initialization_commands"])
    assert "REPLACE_ME" in text and config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("path", AWS_CONFIGS, ids=[p.stem for p in AWS_CONFIGS])
def test_aws_configs_state_the_precision_auto_picks_and_a_price(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    text = " ".join(path.read_text().split())  # comments, with line breaks folded
    [capability] = {INSTANCE_GPUS[t["node_config"]["InstanceType"]][2]
                    for t in _workers(config).values()}
    expected = auto_precision(capability)
    assert f"`precision: auto` (the default) resolves to {expected}" in text
    if expected == "fp16":  # V100: fp16 with loss scaling, never bf16
        assert "resolves to bf16" not in text and "loss scaling" in text
    assert "Price (on-demand, us-east-1, Linux" in text
    assert "check" in text.split("Price (on-demand", 1)[1][:400]


def test_precision_rule_per_gpu() -> None:
    assert {model: auto_precision(cc) for _, model, cc in INSTANCE_GPUS.values()} == {
        "V100": "fp16", "T4": "fp16", "A10G": "bf16", "L4": "bf16", "A100": "bf16",
        "H100": "bf16"}


def test_v100_config_uses_a_proprietary_driver_ami_and_a_cuda12_image() -> None:
    config = yaml.safe_load(AWS.read_text())
    for name, spec in _workers(config).items():
        assert spec["node_config"]["InstanceType"].startswith("p3."), name
    assert "cu126" in config["docker"]["image"]
    # Every ImageId line of a GPU type names the Volta AMI built with the proprietary
    # driver; only the head's (no GPU) is the standard OSS Deep Learning AMI.
    image_lines = [line for line in AWS.read_text().splitlines() if "ImageId:" in line]
    oss = [line for line in image_lines if "OSS" in line or "open" in line.lower()]
    volta = [line for line in image_lines if "build-volta-ami.sh" in line
             and "proprietary" in line]
    assert len(oss) == 1 and "head" in oss[0]
    assert len(volta) == len(image_lines) - 1 == 2  # the spot and on-demand anchors
    script = (CLUSTER / "ami" / "build-volta-ami.sh").read_text()
    assert 'BRANCH="${DRIVER_BRANCH:-580}"' in script and "-open" not in script.replace(
        "(NOT the *-open packages)", "")


def test_open_driver_ami_or_cuda13_image_on_v100_is_refused(tmp_path: Path) -> None:
    config = yaml.safe_load(AWS.read_text())
    ssm = ("resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
           "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id")
    config["available_node_types"]["gpu1-spot"]["node_config"]["ImageId"] = ssm
    config["docker"]["image"] = config["docker"]["image"].replace("cu126", "cu130")
    path = tmp_path / "v100.yaml"
    path.write_text(yaml.safe_dump(config))
    problems = validate_cluster_yaml(path)
    assert [p for p in problems if p.startswith(
        f"available_node_types.gpu1-spot.node_config.ImageId: {ssm} is an "
        "open-kernel-module (OSS) driver AMI")]
    image = [p for p in problems if "looks like a CUDA 13 build" in p]
    assert len(image) == len(_workers(config)) and len(problems) == len(image) + 1, problems
    # The same AMI and image are right for an A10G cluster.
    a10g = yaml.safe_load((CLUSTER / "aws-a10g.yaml").read_text())
    a10g["available_node_types"]["gpu1-spot"]["node_config"]["ImageId"] = ssm
    a10g["docker"]["image"] = config["docker"]["image"]
    path.write_text(yaml.safe_dump(a10g))
    assert validate_cluster_yaml(path) == []


# ------------------------------------------------------------------ KubeRay schema


def test_vendored_crd_schemas_are_pinned_and_small() -> None:
    bundle = kuberay_crd_bundle()
    tag = bundle["kuberay_tag"]
    assert tag == "v1.7.0"
    for kind, file in (("RayCluster", "ray.io_rayclusters.yaml"),
                       ("RayJob", "ray.io_rayjobs.yaml")):
        assert bundle["sources"][kind] == ("https://raw.githubusercontent.com/ray-project/"
                                           f"kuberay/{tag}/ray-operator/config/crd/bases/{file}")
        assert len(bundle["sha256"][kind]) == 64
    readme = (ROOT / "mtkd" / "cluster_schemas" / "README.md").read_text()
    assert f"KubeRay {tag}" in readme and bundle["sources"]["RayJob"] in readme
    gz = ROOT / "mtkd" / "cluster_schemas" / "kuberay-crds.json.gz"
    assert gz.stat().st_size < 100_000
    assert "description" not in json.dumps(bundle["schemas"]["RayCluster"])[:100_000]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"mtkd.cluster_schemas" = ["*.json.gz", "README.md"]' in pyproject


def test_schema_closes_objects_the_way_kubernetes_prunes() -> None:
    from mtkd.clusterconfig import _closed

    closed = _closed({"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string"}}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"c": {"type": "string"}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "opt": {"type": "string", "nullable": True},
        "properties": {"type": "string"}}})
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["free"]
    assert closed["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert closed["properties"]["opt"]["type"] == ["string", "null"]
    assert closed["properties"]["properties"] == {"type": "string"}  # a field named so
    spec = kuberay_schema("RayJob")["properties"]["spec"]
    assert spec["additionalProperties"] is False
    assert spec["properties"]["rayClusterSpec"]["additionalProperties"] is False


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_rayjob_with_four_typos_reports_all_four(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """The issue's case: four typos, one of them an invalid version, all reported."""
    text = RAYJOB.read_text()
    text = _replace_once(text, "  entrypoint: >-", "  entrypont: >-")
    text = _replace_once(text, "      version: v2\n", "      version: v3\n")
    text = _replace_once(text, "        minReplicas: 0\n        maxReplicas: 2",
                         "        minReplica: 0\n        maxReplicas: 2")
    text = _replace_once(text, "            nodeSelector:\n              eks.amazonaws.com/"
                         "capacityType: SPOT", "            nodeSelecter:\n              "
                         "eks.amazonaws.com/capacityType: SPOT")
    path = tmp_path / "rayjob.yaml"
    path.write_text(text)
    lines = text.splitlines()

    def line_of(fragment: str) -> int:
        return next(i + 1 for i, line in enumerate(lines) if fragment in line)

    at = "RayJob mtkd-quickstart"
    cluster = "spec.rayClusterSpec"
    expected = [
        (f"{at}: spec", "unknown key(s) entrypont", "rename entrypont to entrypoint",
         line_of("entrypont:")),
        (f"{at}: {cluster}.autoscalerOptions.version", "'v3' is not one of v1, v2",
         "use one of v1, v2", line_of("version: v3")),
        (f"{at}: {cluster}.workerGroupSpecs.0.template.spec", "unknown key(s) nodeSelecter",
         "rename nodeSelecter to nodeSelector", line_of("nodeSelecter:")),
        (f"{at}: {cluster}.workerGroupSpecs.1", "unknown key(s) minReplica",
         "rename minReplica to minReplicas", line_of("minReplica:")),
    ]
    problems = cluster_problems(path)
    got = [(p.path, p.message.split(" (not in")[0], p.fix, p.where) for p in problems]
    assert got == [(a, m, f, f"{path}:{n}") for a, m, f, n in expected], got
    assert main(["cluster", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 4 problem(s):" in err
    assert "not in the KubeRay v1.7.0 RayJob schema; Kubernetes would drop it" in err


def test_kuberay_schema_catches_types_quantities_and_unknown_top_level_keys(
        tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(KUBERAY.read_text()))
    cr = next(d for d in docs if d["kind"] == "RayCluster")
    cr["specs"] = {}
    group = cr["spec"]["workerGroupSpecs"][0]
    group["maxReplicas"] = "eight"
    group["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "56GB"
    cr["spec"]["autoscalerOptions"]["upscalingMode"] = "Agressive"
    path = tmp_path / "kuberay.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    problems = validate_cluster_yaml(path)
    text = "\n".join(problems)
    assert "RayCluster mtkd: (top level)" in text and "unknown key(s) specs" in text
    assert "rename specs to spec" in text
    assert "spec.workerGroupSpecs.0.maxReplicas" in text and "'eight' is not of type" in text
    assert ("limits.memory" in text and "'56GB' is not a Kubernetes quantity" in text)
    assert "'Agressive' is not one of Default, Aggressive, Conservative (fix: use Aggressive)" \
        in text
    assert len(problems) == 4, problems


def test_rayjob_runs_the_pipeline_with_spot_and_multi_gpu_groups() -> None:
    import shlex

    from mtkd.config import load_config

    job = yaml.safe_load(RAYJOB.read_text())
    spec = job["spec"]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "/home/ray/mtkd/jobs/pipeline.py"]  # jobs/ in the image
    config_at = argv.index("--config") + 1
    overrides = argv[config_at + 1:]
    assert not [o for o in overrides if "precision" in o]  # auto decides per GPU
    config = load_config(ROOT / argv[config_at].removeprefix("/home/ray/mtkd/"), overrides)
    assert config.storage_path.startswith("s3://")
    assert config.teachers.resources_per_member.gpu == 1 and config.student.use_gpu
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"]["eks.amazonaws.com/capacityType"] == "ON_DEMAND"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpus = {name: g["template"]["spec"]["containers"][0]["resources"]["limits"]
            ["nvidia.com/gpu"] for name, g in groups.items()}
    capacity = {name: g["template"]["spec"]["nodeSelector"]["eks.amazonaws.com/capacityType"]
                for name, g in groups.items()}
    assert gpus == {"gpu1-spot": 1, "gpu4-ondemand": 4}
    assert capacity == {"gpu1-spot": "SPOT", "gpu4-ondemand": "ON_DEMAND"}
    for group in groups.values():
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        pod = group["template"]["spec"]
        assert pod["containers"][0]["image"].endswith("/mtkd:0.1.0-ray2.60-cu126")
        assert pod["serviceAccountName"] == "mtkd-ray"
        [term] = pod["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        instances = term["matchExpressions"][0]["values"]
        for instance in instances:  # the pod's GPU request fits the node, bf16 there
            count, _, capability = INSTANCE_GPUS[instance]
            assert count == gpus[group["groupName"]] and auto_precision(capability) == "bf16"


def test_rayjob_that_keeps_its_cluster_or_runs_nothing(tmp_path: Path) -> None:
    job = yaml.safe_load(RAYJOB.read_text())
    del job["spec"]["shutdownAfterJobFinishes"]
    del job["spec"]["entrypoint"]
    path = tmp_path / "rayjob.yaml"
    path.write_text(yaml.safe_dump(job))
    problems = [f"{p.path}: {p.message}" for p in cluster_problems(path)]
    assert len(problems) == 2, problems
    assert problems[0].startswith("RayJob mtkd-quickstart: spec.entrypoint: is missing")
    assert problems[1].startswith("RayJob mtkd-quickstart: spec.shutdownAfterJobFinishes: is "
                                  "not true")
