"""The shipped cluster configs validate offline; broken copies fail naming every problem."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mtkd.cli import main
from mtkd.clusterconfig import cluster_problems, validate_cluster_yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
AWS = CLUSTER / "aws-v100.yaml"
KUBERAY = CLUSTER / "kuberay.yaml"


@pytest.mark.parametrize("path", [AWS, KUBERAY], ids=["aws", "kuberay"])
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
