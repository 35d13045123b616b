#!/bin/sh
# GCE's startup-script for every site VM on GCP. Debian's GCE images ship no cloud-init, so the
# VM would never read its user-data (infra/clouds/cloud-init.yaml, the same on every cloud).
# On the first boot this installs cloud-init and runs its stages once, which read that
# user-data from the metadata server (cloud-init's GCE datasource); on later boots cloud-init's
# own units run it, and this script does nothing. It changes nothing on a live site.
# sshd is already running by then, with the keys the image or Google's guest agent made; cloud-init
# replaces them with the site's host key from user-data (ssh_keys, in the init stage), and sshd is
# restarted so it presents that key, the one in the engine's known_hosts (which refuses the
# earlier keys, so a connection made before the restart fails and is never trusted).
set -eu
command -v cloud-init >/dev/null && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q cloud-init
cloud-init init --local
cloud-init init
systemctl try-restart ssh.service
cloud-init modules --mode=config
cloud-init modules --mode=final
