#!/usr/bin/env bash
# Installs the system packages the test suite needs, only those missing:
# PostgreSQL server binaries, Java + Maven (to run Apache Kafka's own jars),
# Prometheus and promtool, Chromium (status page test).
set -euo pipefail

need=()
have_pg() { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1; }
have_pg || need+=(postgresql)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
# a package install may start services we do not use; tests start their own
if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus postgresql 2>/dev/null || true; fi
pkill -x prometheus 2>/dev/null || true
