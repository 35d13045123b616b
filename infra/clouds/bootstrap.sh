#!/bin/sh
# The one bootstrap of every site VM: cloud VMs run it from user-data (infra/clouds/cloud-init.yaml
# embeds this file), and the local cloud's Debian VMs run it at boot (infra/sites/vm.py).
#
# It starts what this VM's tiers run, and nothing that changes on a live site: peers, pg_hba,
# TLS, replication and pgBackRest are the engine's job (`failover sites protect`, over SSH).
# It reads /etc/failover/site.env:
#   FAILOVER_SITE                    the site (its role is the engine's: the Inventory's, never the VM's)
#   FAILOVER_TIERS                   "db", "app" or "db app" (a local VM runs both)
#   DB_VERSION, DB_PORT, DB_LISTEN   the cluster, its port and listen_addresses ('*' on clouds)
#   APP_IMAGE, APP_PORT              the app's container (cloud app VMs)
# Where systemd runs (cloud VMs) services are systemd units; in a chroot VM without systemd the
# same packages' own tools run them (pg_ctlcluster, supervisord). Safe to run again.
set -eu
. /etc/failover/site.env

has_systemd() { [ -d /run/systemd/system ]; }
has_tier() { case " $FAILOVER_TIERS " in *" $1 "*) return 0 ;; esac; return 1; }

start_supervisor() {
  # The engine installs long-running services (WAL receiver, protector, app) as supervisor programs.
  if has_systemd; then
    systemctl enable --now supervisor
  elif [ ! -S /run/supervisor.sock ]; then
    /usr/bin/supervisord -c /etc/supervisor/supervisord.conf
  fi
}

start_database() {
  # Once `failover sites protect` has set the cluster to manual, a boot leaves it to the rejoin
  # agent (a supervisor program): it starts only as the active primary, or as a standby of it.
  if grep -qs '^manual' "/etc/postgresql/$DB_VERSION/main/start.conf"; then
    echo "failover-bootstrap: PostgreSQL is left to failover-rejoin (it follows the newest Inventory)"
    return 0
  fi
  if [ -e /etc/failover/no-data-disk ]; then  # written by cloud-init's bootcmd (cloud VMs only)
    echo "failover-bootstrap: $(cat /etc/failover/no-data-disk); not starting PostgreSQL on the root disk:" \
         "attach the data disk and reboot" >&2
    return 1
  fi
  # Debian's postgresql.conf reads conf.d/; the engine's settings (`sites protect`) go beside.
  conf="/etc/postgresql/$DB_VERSION/main/conf.d/00-bootstrap.conf"
  {
    echo "port = $DB_PORT"
    echo "listen_addresses = '$DB_LISTEN'"
    echo "ssl = on  # Debian's snakeoil certificate until sites protect installs the toolkit's"
  } > "$conf"
  chown postgres:postgres "$conf"
  if has_systemd; then
    systemctl restart "postgresql@$DB_VERSION-main"
  else
    mkdir -p /run/postgresql && chown postgres:postgres /run/postgresql
    pg_ctlcluster "$DB_VERSION" main restart
  fi
}

start_rejoin() {
  # Every boot of a protected host: the rejoin agent (installed by `sites protect`, not
  # autostarted) makes the database follow the active primary, or starts it if this site is
  # active. Cloud VMs run this file once; later boots start it through the systemd unit that
  # `sites protect` installs beside it (infra/sites/services.install_rejoin).
  [ -e /etc/supervisor/conf.d/failover-rejoin.conf ] || return 0
  for i in $(seq 40); do
    supervisorctl start failover-rejoin >/dev/null 2>&1 && return 0
    sleep 0.5  # supervisord is still starting
  done
  echo "failover-bootstrap: could not start failover-rejoin" >&2
  return 1
}

start_supervisor
if has_tier db; then
  start_database
  start_rejoin
fi
if has_tier app && [ -n "${APP_IMAGE:-}" ] && command -v podman >/dev/null; then
  podman run -d --replace --name social-app --restart=always -p 80:"$APP_PORT" "$APP_IMAGE"
fi
echo "failover-bootstrap: $FAILOVER_SITE ready: tiers $FAILOVER_TIERS"
