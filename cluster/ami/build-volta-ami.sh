#!/usr/bin/env bash
# Prepare an EC2 instance as the V100 (Volta) node image for cluster/aws-v100.yaml:
# Ubuntu 22.04 + NVIDIA's PROPRIETARY kernel driver (branch R580, the last long-term branch
# that supports Volta; NVIDIA's open kernel modules need Turing or newer) + Docker + the
# NVIDIA Container Toolkit + the AWS CLI (for the ECR login). CUDA itself comes with the
# container image (cluster/Dockerfile), not from this AMI.
#
# Not run by the mtkd authors (no AWS account was available): read it before you use it.
# The steps are the standard Ubuntu and NVIDIA Container Toolkit installation.
#
# Use (about 15 minutes, one p3.2xlarge hour):
#   1. Launch a p3.2xlarge from Canonical's Ubuntu 22.04 LTS AMI (amd64, hvm-ssd-gp3) with
#      a 100 GB gp3 root volume; ssh in as ubuntu.
#   2. sudo bash build-volta-ami.sh      # installs, then reboots
#   3. ssh in again: sudo bash build-volta-ami.sh --verify
#   4. From your laptop: aws ec2 create-image --instance-id i-... --name mtkd-volta-r580-$(date +%Y%m%d)
#      then put the AMI id into every p3 node type of cluster/aws-v100.yaml and terminate
#      the instance.
set -euo pipefail

BRANCH="${DRIVER_BRANCH:-580}"   # R580: LTSB, supported until June 2028 per NVIDIA

if [[ "${1:-}" == "--verify" ]]; then
    nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv
    # The proprietary module's license is "NVIDIA"; the open one is "Dual MIT/GPL".
    license="$(modinfo -F license nvidia)"
    echo "nvidia kernel module license: ${license}"
    [[ "${license}" == "NVIDIA" ]] || { echo "not the proprietary driver" >&2; exit 1; }
    docker run --rm --gpus all ubuntu:22.04 nvidia-smi -L
    echo "OK: this instance can be imaged for cluster/aws-v100.yaml"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -y
apt-get install -y ca-certificates curl gnupg awscli docker.io "linux-headers-$(uname -r)"

# Ubuntu's packaged NVIDIA server driver, proprietary flavour (NOT the *-open packages).
apt-get install -y "nvidia-headless-${BRANCH}-server" "nvidia-utils-${BRANCH}-server" \
    "linux-modules-nvidia-${BRANCH}-server-$(uname -r)" \
  || apt-get install -y "nvidia-headless-${BRANCH}-server" "nvidia-utils-${BRANCH}-server"
# Keep unattended upgrades from moving the driver to a branch without Volta.
apt-mark hold "nvidia-headless-${BRANCH}-server" "nvidia-utils-${BRANCH}-server"

# NVIDIA Container Toolkit (docs.nvidia.com/datacenter/cloud-native/container-toolkit).
curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey \
  | gpg --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
  | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' \
  > /etc/apt/sources.list.d/nvidia-container-toolkit.list
apt-get update -y
apt-get install -y nvidia-container-toolkit
nvidia-ctk runtime configure --runtime=docker
systemctl enable docker
usermod -aG docker ubuntu   # the Ray cluster launcher runs docker as the ssh user

echo "installed; rebooting to load the driver. Then run: sudo bash $0 --verify"
reboot
