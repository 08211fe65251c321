#!/usr/bin/env bash
# FitFlow Kiosk installer for Raspberry Pi OS (or Debian) 12 "bookworm", Pi 3, 4 and 5.
#
#   sudo deploy/install.sh                         install, update or repair (asks once on a terminal)
#   sudo deploy/install.sh --unattended [--config FILE]
#                                                  no questions; FILE seeds /etc/fitflow-kiosk/kiosk.toml
#   sudo deploy/install.sh --uninstall [--purge]   remove; the data and the config stay unless --purge
#
# Every run converges the device to the same state, so install = update = repair: apt packages
# (deploy/apt-packages.txt), the system user `fitflow` in the gpio and video groups, the venv in
# /opt/fitflow-kiosk/venv with this checkout installed, the data directory, the systemd units.
# The owner's config is written only when there is none: it is never overwritten.
# Everything is logged to /var/log/fitflow-kiosk-install.log.
#
# For tests: FITFLOW_ROOT (default /) prefixes every file the script touches,
# FITFLOW_OS_RELEASE names the os-release file to judge (default $FITFLOW_ROOT/etc/os-release)
# and FITFLOW_PYTHON the interpreter the venv is made with (default /usr/bin/python3).
set -euo pipefail

readonly SERVICE_USER=fitflow
readonly OPT_DIR=/opt/fitflow-kiosk
readonly VENV=$OPT_DIR/venv
readonly CONF_DIR=/etc/fitflow-kiosk
readonly CONFIG=$CONF_DIR/kiosk.toml
readonly DATA_DIR=/var/lib/fitflow-kiosk
readonly BACKUP_DIR=$DATA_DIR/backups
readonly UNIT_DIR=/etc/systemd/system
readonly LOG_FILE=/var/log/fitflow-kiosk-install.log
readonly COMMAND_LINK=/usr/local/bin/kiosk
readonly APT_LOCK_WAIT=DPkg::Lock::Timeout=300
# apt's python3-* packages are built for Debian's own interpreter, never a /usr/local one.
readonly SYSTEM_PYTHON=${FITFLOW_PYTHON:-/usr/bin/python3}
readonly UNITS=(fitflow-scanner.service fitflow-sync.service fitflow-web.service
  fitflow-backup.service fitflow-backup.timer)
readonly SERVICES=(fitflow-scanner.service fitflow-sync.service fitflow-web.service)

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly SOURCE_DIR=${SCRIPT_DIR%/deploy}
ROOT=${FITFLOW_ROOT:-/}
readonly ROOT=${ROOT%/}  # "" for the real root, so "$ROOT$path" is always the path itself

unattended=false
enabled_services=()
build_tree=""  # a temporary copy of the source, removed on every exit path

cleanup() { if [ -n "$build_tree" ]; then rm -rf "$build_tree"; fi; }
trap cleanup EXIT
seed_config=""
action=install
purge=false

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 1; }
at() { printf '%s%s' "$ROOT" "$1"; }  # where a system path is under FITFLOW_ROOT

say() {
  echo "$*"
  if [ -n "${log_path:-}" ]; then echo "$*" >>"$log_path"; fi
}

# Runs a command with its output in the log only; on failure shows the log's tail and stops.
run() {
  echo "+ $*" >>"$log_path"
  if ! "$@" >>"$log_path" 2>&1; then
    echo "install.sh: failed: $*" >&2
    tail -n 20 "$log_path" >&2
    die "stopped; the full log is $LOG_FILE"
  fi
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --unattended) unattended=true ;;
      --config)
        [ $# -ge 2 ] || die "--config needs a file"
        seed_config=$2
        shift
        ;;
      --config=*) seed_config=${1#--config=} ;;
      --uninstall) action=uninstall ;;
      --purge) purge=true ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
  done
  if $purge && [ "$action" != uninstall ]; then die "--purge only goes with --uninstall"; fi
  if [ -n "$seed_config" ] && [ ! -r "$seed_config" ]; then
    die "--config $seed_config: no such readable file"
  fi
  return 0
}

require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    die "refusing to run: must be root (try: sudo $0 $*)"
  fi
}

os_field() {  # os_field KEY FILE: the value of one os-release field, without quotes
  awk -v key="$1" 'index($0, key "=") == 1 {
    value = substr($0, length(key) + 2); gsub(/["\047]/, "", value); print value; exit
  }' "$2"
}

# Raspberry Pi OS 12 reports ID=debian (64-bit) or ID=raspbian (32-bit), codename bookworm.
require_supported_os() {
  local file=${FITFLOW_OS_RELEASE:-$(at /etc/os-release)} id codename name
  [ -r "$file" ] || die "refusing to run: cannot read $file to identify the OS"
  id=$(os_field ID "$file")
  codename=$(os_field VERSION_CODENAME "$file")
  name=$(os_field PRETTY_NAME "$file")
  case "$id" in
    debian | raspbian) ;;
    *) codename="" ;;
  esac
  if [ "$codename" != bookworm ]; then
    die "refusing to run on ${name:-an unknown OS}: FitFlow Kiosk installs on Raspberry Pi OS" \
      "(or Debian) 12 bookworm only"
  fi
}

is_raspberry_pi() {
  local model
  model=$(at /proc/device-tree/model)
  [ -r "$model" ] && grep -qa 'Raspberry Pi' "$model"  # the file ends in a NUL byte
}

open_log() {
  log_path=$(at "$LOG_FILE")
  mkdir -p "$(dirname "$log_path")"
  touch "$log_path"
  chmod 0640 "$log_path"
  echo "=== $(date -u '+%Y-%m-%dT%H:%M:%SZ') install.sh $action from $SOURCE_DIR" >>"$log_path"
}

confirm() {
  if $unattended || [ ! -t 0 ]; then return 0; fi
  local answer
  read -r -p "$1 [Y/n] " answer
  case "$answer" in
    n* | N*) die "cancelled" ;;
  esac
}

# Package names from deploy/apt-packages.txt; the ones marked `pi` only on a Raspberry Pi.
apt_packages() {
  local on_pi=$1 name tag _rest
  while read -r name tag _rest; do
    case "$name" in "" | \#*) continue ;; esac
    if [ "$tag" = pi ] && ! $on_pi; then continue; fi
    echo "$name"
  done <"$SCRIPT_DIR/apt-packages.txt"
}

install_packages() {
  local on_pi=false packages
  if is_raspberry_pi; then on_pi=true; fi
  mapfile -t packages < <(apt_packages "$on_pi")
  if ! $on_pi; then
    say "  not a Raspberry Pi: skipping the Pi camera and GPIO packages (use a USB camera)"
  fi
  say "- apt packages: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Offline, the package lists already on the device still do for a repair.
  # Wait (up to 5 minutes) for the dpkg lock instead of failing: a fresh Pi runs its own
  # unattended upgrades in the first minutes after boot.
  echo "+ apt-get -o $APT_LOCK_WAIT update -q" >>"$log_path"
  apt-get -o "$APT_LOCK_WAIT" update -q >>"$log_path" 2>&1 ||
    say "  WARNING: apt-get update failed (offline?): using the package lists already here"
  # No recommends: python3-picamera2 would pull a desktop GUI toolkit onto a headless kiosk.
  run apt-get -o "$APT_LOCK_WAIT" install -y -q --no-install-recommends "${packages[@]}"
}

ensure_user() {
  local group
  for group in gpio video; do  # gpio exists on Raspberry Pi OS only; harmless elsewhere
    if ! getent group "$group" >/dev/null; then run groupadd --system "$group"; fi
  done
  if getent passwd "$SERVICE_USER" >/dev/null; then
    say "- user $SERVICE_USER exists; making sure it is in gpio and video"
    run usermod -aG gpio,video "$SERVICE_USER"
  else
    say "- creating system user $SERVICE_USER (groups gpio, video)"
    run useradd --system --user-group --groups gpio,video --home-dir "$DATA_DIR" \
      --no-create-home --shell /usr/sbin/nologin --comment "FitFlow Kiosk" "$SERVICE_USER"
  fi
}

# A venv that can see apt's packages: python3-picamera2, libcamera's bindings and their numpy 1.x
# are not installable from PyPI in a compatible form, so they must come from the system.
ensure_venv() {
  local venv cfg
  venv=$(at "$VENV")
  cfg=$venv/pyvenv.cfg
  if "$venv/bin/python" -c 'import sys' >/dev/null 2>&1 &&
    grep -q '^include-system-site-packages *= *true' "$cfg" 2>/dev/null; then
    say "- venv $VENV is in place"
  else
    say "- creating the venv $VENV (--system-site-packages)"
    mkdir -p "$(dirname "$venv")"
    # --clear repairs a venv broken by a Python upgrade or created without system packages.
    run "$SYSTEM_PYTHON" -m venv --clear --system-site-packages "$venv"
  fi
}

# Installs this checkout into the venv without letting pip touch apt's numpy or add OpenCV:
# - every dependency pyproject.toml names for the core is pure Python or has a wheel that
#   works with numpy 1.x; pip sees apt's numpy (through --system-site-packages) as installed;
# - a constraints file pins numpy to apt's version, so a dependency that wanted numpy 2 makes
#   the install fail loudly instead of replacing it; the OpenCV wheels are pinned to `<0`, a
#   version that does not exist, so nothing can pull them in (cv2 comes from python3-opencv);
# - the extras (vision, pyzbar, pi, dev) are not installed: on the device they come from apt.
install_package() {
  local venv python numpy_before numpy_after constraints tree
  venv=$(at "$VENV")
  python=$venv/bin/python
  numpy_before=$("$python" -c 'import numpy; print(numpy.__version__)' 2>/dev/null) ||
    die "the venv cannot import apt's numpy: is python3-numpy installed?"
  constraints=$(at "$OPT_DIR/constraints.txt")
  cat >"$constraints" <<EOF
# Written by deploy/install.sh: keeps pip away from the packages apt provides.
numpy==$numpy_before
opencv-python<0
opencv-python-headless<0
opencv-contrib-python<0
opencv-contrib-python-headless<0
EOF
  say "- installing fitflow-kiosk from $SOURCE_DIR into the venv (numpy $numpy_before from apt)"
  # pip builds in the source tree: build from a copy, so the checkout gets no root-owned files.
  build_tree=$(mktemp -d)
  tree=$build_tree/fitflow-kiosk
  mkdir "$tree"
  tar -C "$SOURCE_DIR" --exclude=./.venv --exclude=./.git --exclude=./build \
    --exclude=./.hypothesis --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=__pycache__ \
    -cf - . |
    tar -C "$tree" -xf -
  run "$python" -m pip install --disable-pip-version-check --no-input -q \
    --constraint "$constraints" "$tree"
  # The same version number can hold different code (a newer checkout): reinstall the package
  # itself, and only it.
  run "$python" -m pip install --disable-pip-version-check --no-input -q \
    --no-deps --force-reinstall "$tree"
  rm -rf "$build_tree"
  build_tree=""
  numpy_after=$("$python" -c 'import numpy; print(numpy.__version__)' 2>/dev/null) || true
  if [ "$numpy_after" != "$numpy_before" ]; then
    die "numpy changed from $numpy_before to ${numpy_after:-nothing} in the venv; see $LOG_FILE"
  fi
  run "$venv/bin/kiosk" --version
  # `kiosk ...` on the PATH for the installer and the owner (sudo kiosk provision).
  mkdir -p "$(at "$(dirname "$COMMAND_LINK")")"
  ln -sfn "$VENV/bin/kiosk" "$(at "$COMMAND_LINK")"
}

# The service user owns $DATA_DIR and can put anything inside it, a symbolic link to /etc/shadow
# in place of backups/ included: root must never chmod or chown through a link.
make_dir() {  # make_dir PATH MODE OWNER:GROUP
  local dir parent
  dir=$(at "$1")
  if [ -L "$dir" ]; then
    die "refusing to use $1: it is a symbolic link (to $(readlink "$dir")), not a folder." \
      "Move it away and run the installer again."
  fi
  mkdir -p "$dir"
  parent=$(cd -P -- "$(dirname "$dir")" && pwd -P)
  # chmod has no "do not follow" option: change the folder we are in (".") after checking that
  # it is the real path, so a link swapped in after the test above is not followed either.
  (cd -P -- "$dir" && [ "$(pwd -P)" = "${parent%/}/$(basename "$dir")" ] && chmod "$2" .) ||
    die "refusing to use $1: it was replaced by something other than a folder while installing"
  run chown -h "$3" "$dir"
}

ensure_dirs() {
  say "- data $DATA_DIR, backups $BACKUP_DIR, config $CONF_DIR"
  make_dir "$DATA_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
  make_dir "$BACKUP_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
  # The service reads its config but cannot change it.
  make_dir "$CONF_DIR" 0750 "root:$SERVICE_USER"
}

check_config() {  # check_config FILE: true when the kiosk accepts it (errors go to the log)
  "$(at "$VENV")/bin/kiosk" config check "$1" >>"$log_path" 2>&1
}

# Writes the config only when there is none: the owner's settings always win.
ensure_config() {
  local config seed
  config=$(at "$CONFIG")
  if [ -e "$config" ]; then
    say "- keeping the existing $CONFIG"
    if [ -n "$seed_config" ] && ! cmp -s "$seed_config" "$config"; then
      say "  note: $seed_config was not installed because $CONFIG exists (remove it to reseed)"
    fi
  else
    seed=${seed_config:-$SCRIPT_DIR/kiosk.example.toml}
    check_config "$seed" ||
      die "$seed is not a valid configuration (details in $LOG_FILE; check it with: kiosk config check $seed)"
    say "- writing $CONFIG from $seed"
    cp "$seed" "$config.new"
    chmod 0640 "$config.new"
    mv "$config.new" "$config"
  fi
  chmod 0640 "$config"
  run chown "root:$SERVICE_USER" "$config"
  if ! check_config "$config"; then
    say "  WARNING: $CONFIG is not valid: the door will not start. Run: kiosk config check"
  fi
}

install_units() {
  local unit source target
  say "- systemd units in $UNIT_DIR"
  mkdir -p "$(at "$UNIT_DIR")"
  for unit in "${UNITS[@]}"; do
    source=$SOURCE_DIR/systemd/$unit
    target=$(at "$UNIT_DIR/$unit")
    if ! cmp -s "$source" "$target"; then
      cp "$source" "$target.new"
      chmod 0644 "$target.new"
      mv "$target.new" "$target"
    fi
    chmod 0644 "$target"
  done
  run systemctl daemon-reload
  run systemctl enable "${SERVICES[@]}"
  enabled_services=("${SERVICES[@]}")
  run systemctl enable --now fitflow-backup.timer
  # An update takes effect at once in the services already running; none is started here,
  # so a fresh device does not drive its relay before it is provisioned.
  run systemctl try-restart "${SERVICES[@]}"
}

next_steps() {
  cat <<EOF | tee -a "$log_path"

FitFlow Kiosk is installed. Next:
  1. sudo kiosk provision     # cloud enrolment, owner password, door and relay settings
  2. sudo kiosk selftest      # camera, relay, LED, buzzer, clock, cloud, disk, database
  3. sudo systemctl restart ${enabled_services[*]}
Config: $CONFIG   Data: $DATA_DIR   Log of this run: $LOG_FILE
Run this script again at any time to update or repair the installation.
EOF
}

do_install() {
  require_supported_os
  open_log
  confirm "Install FitFlow Kiosk from $SOURCE_DIR on this device?"
  say "FitFlow Kiosk installer (log: $LOG_FILE)"
  install_packages
  ensure_user
  ensure_venv
  install_package
  ensure_dirs
  ensure_config
  install_units
  next_steps
}

do_uninstall() {
  local unit
  open_log
  if $purge; then
    confirm "Remove FitFlow Kiosk AND its data ($DATA_DIR: check-ins, device credentials) and config ($CONF_DIR)?"
  else
    confirm "Remove FitFlow Kiosk (its data in $DATA_DIR and config in $CONF_DIR stay)?"
  fi
  say "- stopping and disabling the services"
  for unit in fitflow-backup.timer "${SERVICES[@]}" fitflow-backup.service; do
    # Stopping the scanner runs its ExecStopPost, which forces the relay off: before the venv goes.
    echo "+ systemctl disable --now $unit" >>"$log_path"
    systemctl disable --now "$unit" >>"$log_path" 2>&1 || true
  done
  for unit in "${UNITS[@]}"; do rm -f "$(at "$UNIT_DIR/$unit")"; done
  run systemctl daemon-reload
  say "- removing $OPT_DIR"
  rm -rf "$(at "$OPT_DIR")"
  if [ "$(readlink "$(at "$COMMAND_LINK")" 2>/dev/null)" = "$VENV/bin/kiosk" ]; then
    rm -f "$(at "$COMMAND_LINK")"
  fi
  if $purge; then
    say "- purging $DATA_DIR, $CONF_DIR and the user $SERVICE_USER"
    rm -rf "$(at "$DATA_DIR")" "$(at "$CONF_DIR")"
    if getent passwd "$SERVICE_USER" >/dev/null; then run userdel "$SERVICE_USER"; fi
  else
    # The config holds the door's wiring (the relay's polarity): a reinstall must find it, or it
    # would seed the defaults and could hold an active-low door open.
    say "- kept $DATA_DIR (database, backups, device credentials), $CONF_DIR (the config) and"
    say "  the user $SERVICE_USER; remove them with: sudo $0 --uninstall --purge"
  fi
  say "FitFlow Kiosk is removed."
}

main() {
  parse_args "$@"
  require_root "$@"
  umask 022
  if [ "$action" = uninstall ]; then do_uninstall; else do_install; fi
}

main "$@"
