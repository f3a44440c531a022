#!/usr/bin/env bash
# Installs the system packages the test suite needs, only those missing:
# PostgreSQL server binaries, Java + Maven (to run Apache Kafka's own jars),
# Prometheus and promtool, Chromium (status page test).
#
# It touches nothing else: no service is stopped, no process is killed. The
# tests start their own servers on free ports and never use system services.
# So that installing a package does not start one either (Debian's postgresql
# and prometheus packages start theirs from the package scripts), the install
# runs under a policy-rc.d that denies service starts (exit 101, the
# invoke-rc.d/deb-systemd-invoke convention); an existing policy-rc.d is left
# as it is, and the one written here is removed afterwards.
set -euo pipefail

POLICY_RC_D="${HELIOSDB_CDC_POLICY_RC_D:-/usr/sbin/policy-rc.d}"
POLICY_MARK="# written by heliosdb-cdc scripts/install-system-deps.sh"

need=()
have_pg() { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1; }
have_pg || need+=(postgresql)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "installing system packages: ${need[*]}"
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

remove_policy() {
  # only the file written below, and only if it is still ours
  if [ -f "$POLICY_RC_D" ] && grep -qxF "$POLICY_MARK" "$POLICY_RC_D"; then
    $SUDO rm -f "$POLICY_RC_D"
  fi
}
if [ ! -e "$POLICY_RC_D" ]; then
  trap remove_policy EXIT
  trap 'exit 130' INT TERM
  printf '#!/bin/sh\n%s\n# deny service starts while packages are installed\nexit 101\n' "$POLICY_MARK" \
    | $SUDO tee "$POLICY_RC_D" >/dev/null
  $SUDO chmod 755 "$POLICY_RC_D"
fi

$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
