#!/usr/bin/env bash
# Removes FitFlow Kiosk: stops and disables its services, removes the units and the venv. The
# config in /etc/fitflow-kiosk, the database and the device's credentials in /var/lib/fitflow-kiosk
# stay unless --purge.
#   sudo deploy/uninstall.sh [--purge]
# The same as `deploy/install.sh --uninstall [--purge]`.
set -euo pipefail
exec "$(dirname "$0")/install.sh" --uninstall "$@"
