"""Re-create the vendored KubeRay CRD schemas (``kuberay-crds.json.gz``).

    python -m mtkd.cluster_schemas.vendor --tag v1.7.0            # downloads from GitHub
    python -m mtkd.cluster_schemas.vendor --tag v1.7.0 --from DIR # ray.io_*.yaml in DIR

Takes ``spec.versions[name=v1].schema.openAPIV3Schema`` of the RayCluster and RayJob CRDs
of one KubeRay release tag, drops every ``description`` (about 90% of the bytes: the CRDs
embed the whole Kubernetes PodTemplateSpec schema with its documentation), and writes the
result as gzipped JSON with the tag, the source URLs and the sha256 of each CRD file.
Nothing else is changed: closing objects to unknown keys happens when the schema is used
(:func:`mtkd.clusterconfig.kuberay_schema`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = "ray-project/kuberay"
CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
SOURCE = "https://raw.githubusercontent.com/{repo}/{tag}/ray-operator/config/crd/bases/{file}"
OUTPUT = Path(__file__).with_name("kuberay-crds.json.gz")


def strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def build(tag: str, source_dir: Path | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {"kuberay_tag": tag, "repository": f"https://github.com/{REPO}",
                              "sources": {}, "sha256": {}, "schemas": {}}
    for kind, file in CRDS.items():
        url = SOURCE.format(repo=REPO, tag=tag, file=file)
        if source_dir is not None:
            raw = (source_dir / file).read_bytes()
        else:
            with urllib.request.urlopen(url, timeout=60) as response:
                raw = response.read()
        crd = yaml.safe_load(raw)
        if crd["spec"]["names"]["kind"] != kind:
            raise SystemExit(f"{file} defines {crd['spec']['names']['kind']}, not {kind}")
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        bundle["sources"][kind] = url
        bundle["sha256"][kind] = hashlib.sha256(raw).hexdigest()
        bundle["schemas"][kind] = strip_descriptions(version["schema"]["openAPIV3Schema"])
    return bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True, help="KubeRay release tag, e.g. v1.7.0")
    parser.add_argument("--from", dest="source_dir", type=Path,
                        help="folder with ray.io_rayclusters.yaml and ray.io_rayjobs.yaml "
                             "of that tag (default: download them)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    bundle = build(args.tag, args.source_dir)
    data = json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode()
    # mtime=0: the same input gives the same bytes.
    args.output.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes): KubeRay {args.tag}, "
          + ", ".join(f"{k} sha256 {v[:12]}" for k, v in bundle["sha256"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
