#!/bin/sh
# GCE's startup-script for every site VM on GCP. Debian's GCE images ship no cloud-init, so the
# VM would never read its user-data (infra/clouds/cloud-init.yaml, the same on every cloud).
# On the first boot this installs cloud-init and runs its stages once, which read that
# user-data from the metadata server (cloud-init's GCE datasource); on later boots cloud-init's
# own units run it, and this script does nothing. It changes nothing on a live site.
set -eu
command -v cloud-init >/dev/null && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q cloud-init
cloud-init init --local
cloud-init init
cloud-init modules --mode=config
cloud-init modules --mode=final
