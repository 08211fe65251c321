#!/usr/bin/env bash
# FitFlow Kiosk installer for 64-bit Raspberry Pi OS 12 "bookworm" (Pi 3, 4 and 5), or Debian 12.
#
#   sudo deploy/install.sh                         install, update or repair (asks once on a terminal)
#   sudo deploy/install.sh --unattended [--config FILE]
#                                                  no questions; FILE seeds /etc/fitflow-kiosk/kiosk.toml
#   sudo deploy/install.sh --with-opencv           also install OpenCV, whatever camera the config names
#   sudo deploy/install.sh --uninstall [--purge]   remove; the data and the config stay unless --purge
#
# Every run converges the device to the same state, so install = update = repair: apt packages
# (deploy/apt-packages.txt; OpenCV only for a USB camera or replayed files), the system user
# `fitflow` in the gpio and video groups, the venv in /opt/fitflow-kiosk/venv with this checkout
# installed, the data directory, the systemd units. The owner's config is written only when there
# is none: it is never overwritten. The door starts only once `kiosk provision` has set the relay.
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
# Written by `kiosk provision` once the relay's polarity is set (kiosk.ops.provision): the
# scanner's unit starts only when it exists (ConditionPathExists= in fitflow-scanner.service).
readonly PROVISIONED=$CONFIG.provisioned
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
with_opencv=false
enabled_services=()
restart_problems=()  # services that did not come back after the update
config_backend=""  # the installed config's camera.backend; empty when it is not valid
build_tree=""  # a temporary copy of the source, removed on every exit path

cleanup() { if [ -n "$build_tree" ]; then rm -rf "$build_tree"; fi; }
trap cleanup EXIT
seed_config=""
action=install
purge=false

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
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
      --with-opencv) with_opencv=true ;;
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
  require_64_bit "${name:-this system}"
}

# 64-bit only. On 32-bit ARM the QR decoder has no usable package: PyPI has no armv7 wheel of
# zxing-cpp (2.2 or newer), so pip would compile it on the Pi (a C++ toolchain and CMake, most of
# an hour on a Pi 3), and Debian's python3-zxing-cpp is 1.4, too old for the decoder adapter.
# Every supported Pi (3, 4, 5) runs the 64-bit system. The userland decides, not the kernel:
# 32-bit Raspberry Pi OS boots a 64-bit kernel on a Pi 4 and 5 (uname says aarch64).
require_64_bit() {  # require_64_bit OS_NAME
  local arch
  arch=$(dpkg --print-architecture 2>/dev/null) ||
    die "refusing to run: dpkg cannot tell this system's architecture"
  case "$arch" in
    arm64 | amd64) ;;
    armhf | armel)
      die "refusing to run on 32-bit $1 ($arch): FitFlow Kiosk needs the 64-bit (arm64) system," \
        "which every supported Pi (3, 4, 5) runs. Its QR decoder, zxing-cpp 2.2 or newer, has no" \
        "32-bit ARM build (pip would compile it for most of an hour; Debian's python3-zxing-cpp" \
        "is 1.4, too old). Flash Raspberry Pi OS Lite (64-bit) and run the installer again." \
        "Nothing was changed."
      ;;
    *)
      die "refusing to run on $1 for $arch: FitFlow Kiosk installs on arm64 (a Raspberry Pi) or" \
        "amd64 only. Nothing was changed."
      ;;
  esac
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

# Package names from deploy/apt-packages.txt: the untagged ones, plus those tagged with one of the
# arguments (`pi`: only on a Raspberry Pi). `apt_packages only TAG` lists just those tagged TAG.
apt_packages() {
  local name tag _rest only=false wanted
  if [ "${1:-}" = only ]; then
    only=true
    shift
  fi
  wanted=" $* "
  while read -r name tag _rest; do
    case "$name" in "" | \#*) continue ;; esac
    if [ -z "$tag" ] && $only; then continue; fi
    if [ -n "$tag" ] && [[ "$wanted" != *" $tag "* ]]; then continue; fi
    echo "$name"
  done <"$SCRIPT_DIR/apt-packages.txt"
}

has_candidate() {  # has_candidate PACKAGE: apt has a version of it to install (or installed)
  local candidate
  candidate=$(LC_ALL=C apt-cache policy "$1" 2>/dev/null |
    awk '$1 == "Candidate:" { print $2; exit }') || true
  [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

# Before anything is installed, every package must be available. On a Raspberry Pi the camera and
# GPIO packages come from the Raspberry Pi OS archive, which plain Debian does not have.
require_candidates() {  # require_candidates ON_PI PACKAGE...
  local on_pi=$1 package missing=()
  shift
  for package in "$@"; do
    if ! has_candidate "$package"; then missing+=("$package"); fi
  done
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  echo "+ apt has no candidate for: ${missing[*]}" >>"$log_path"
  if $on_pi && [[ " ${missing[*]} " == *" python3-picamera2 "* ||
    " ${missing[*]} " == *" python3-lgpio "* ]]; then
    die "refusing to install: this Raspberry Pi's apt sources have no ${missing[*]}. They come" \
      "from the Raspberry Pi OS archive, so this looks like plain Debian on a Pi, where the" \
      "Camera Module and the GPIO pins would not work. Flash Raspberry Pi OS Lite (64-bit) and" \
      "run the installer again (or add the Raspberry Pi OS apt archive and its signing key to" \
      "/etc/apt/sources.list.d, then run it again). Nothing was installed."
  fi
  die "refusing to install: apt has no package ${missing[*]} (check /etc/apt/sources.list*" \
    "and run apt-get update). Nothing was installed."
}

update_package_lists() {
  export DEBIAN_FRONTEND=noninteractive
  # Offline, the package lists already on the device still do for a repair.
  # Wait (up to 5 minutes) for the dpkg lock instead of failing: a fresh Pi runs its own
  # unattended upgrades in the first minutes after boot.
  echo "+ apt-get -o $APT_LOCK_WAIT update -q" >>"$log_path"
  apt-get -o "$APT_LOCK_WAIT" update -q >>"$log_path" 2>&1 ||
    say "  WARNING: apt-get update failed (offline?): using the package lists already here"
}

install_packages() {
  local on_pi=false packages
  if is_raspberry_pi; then on_pi=true; fi
  if $on_pi; then
    mapfile -t packages < <(apt_packages pi)
  else
    mapfile -t packages < <(apt_packages)
    say "  not a Raspberry Pi: skipping the Pi camera and GPIO packages (use a USB camera:" \
      "camera.backend = \"opencv\")"
  fi
  say "- apt packages: ${packages[*]}"
  update_package_lists
  require_candidates "$on_pi" "${packages[@]}"
  # No recommends: python3-picamera2 would pull a desktop GUI toolkit onto a headless kiosk.
  run apt-get -o "$APT_LOCK_WAIT" install -y -q --no-install-recommends "${packages[@]}"
}

# OpenCV (python3-opencv: about 290 more packages and 710 MB, with Qt, VTK, GDAL and ffmpeg) only
# where frames come through it: a USB camera (camera.backend = "opencv") or replayed files
# ("replay"), or when --with-opencv asks. The Camera Module (picamera2) needs numpy and zxing-cpp.
# A package installed by an earlier run is never removed: something else may use it.
# camera_backend CONFIG: its camera.backend, read by the kiosk's own loader, which checks the whole
# file as `kiosk config check` does (fails, errors in the log, when it is not valid). One
# interpreter start for both (0.12 s of CPU each on the development machine; a Pi is 3-5x slower).
camera_backend() {
  "$(at "$VENV")/bin/python" - "$1" 2>>"$log_path" <<'PYTHON'
import sys

from kiosk.config import ConfigError, load_config

try:
    # The file alone, as the services read it: they have no KIOSK_* environment.
    config = load_config(sys.argv[1], None)
except ConfigError as exc:  # one line per problem, each with its place in the file
    sys.exit(str(exc))
print(config.camera.backend)
PYTHON
}

install_camera_packages() {
  local packages
  mapfile -t packages < <(apt_packages only opencv)
  if $with_opencv; then
    say "- OpenCV (--with-opencv): ${packages[*]}"
  elif [ -z "$config_backend" ]; then
    say "  WARNING: cannot tell camera.backend from $CONFIG (details in $LOG_FILE): OpenCV is" \
      "not installed; fix the config and run the installer again"
    return 0
  elif [ "$config_backend" = opencv ] || [ "$config_backend" = replay ]; then
    say "- OpenCV for camera.backend = \"$config_backend\": ${packages[*]}"
  else
    say "- no OpenCV: camera.backend = \"$config_backend\" does not need it (a USB camera or" \
      "replayed files do: set camera.backend and run the installer again, or add --with-opencv)"
    return 0
  fi
  require_candidates false "${packages[@]}"
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
  # The copy leaves out what the package is not built from (the tests, the docs, caches): fewer
  # files to write to the SD card.
  build_tree=$(mktemp -d)
  tree=$build_tree/fitflow-kiosk
  mkdir "$tree"
  tar -C "$SOURCE_DIR" --exclude=./.venv --exclude=./.git --exclude=./build \
    --exclude=./.hypothesis --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=__pycache__ \
    --exclude=./tests --exclude=./docs --exclude=./.import_linter_cache --exclude='./*.egg-info' \
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
  # Root's; everyone may read it (`kiosk config check` without sudo): the config holds no secrets,
  # which live in $DATA_DIR with mode 0600. The services read it and cannot change it.
  make_dir "$CONF_DIR" 0755 root:root
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
    chmod 0644 "$config.new"
    mv "$config.new" "$config"
    # A marker left from an earlier config vouches for that config's relay wiring, not this one's.
    if [ -e "$(at "$PROVISIONED")" ] || [ -L "$(at "$PROVISIONED")" ]; then
      rm -f "$(at "$PROVISIONED")"
      say "  removed $PROVISIONED: it was for the previous config; run kiosk provision again"
    fi
  fi
  chmod 0644 "$config"
  run chown root:root "$config"
  # Checked as installed; its camera.backend decides on OpenCV (install_camera_packages).
  if ! config_backend=$(camera_backend "$config"); then
    config_backend=""
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
  # Enabled, so they start at boot; the scanner only once `kiosk provision` has set the relay's
  # polarity (ConditionPathExists= on $PROVISIONED): until then the example's guess of it could
  # hold an active-low relay closed, the turnstile released.
  run systemctl enable "${SERVICES[@]}"
  enabled_services=("${SERVICES[@]}")
  run systemctl enable --now fitflow-backup.timer
  restart_running
}

# An update takes effect at once in the services already running; none is started here. One that
# does not come back (a scanner crash-looping on a camera fault) is reported, not fatal: the
# installation itself is complete, and the service keeps retrying on its own. The state decides,
# not only try-restart's exit code: try-restart does nothing to a unit caught between two attempts
# (deactivating while its ExecStopPost releases the relay) and then succeeds.
restart_running() {
  local unit before after
  for unit in "${SERVICES[@]}"; do
    # A door started before provisioning wrote its marker (by hand, or by an installer older than
    # the marker) would be stopped for good by a restart: it keeps running the version it has.
    if [ "$unit" = fitflow-scanner.service ] && [ ! -e "$(at "$PROVISIONED")" ] &&
      systemctl is-active --quiet "$unit" 2>/dev/null; then
      say "  WARNING: $unit runs but the relay's polarity was never set by kiosk provision" \
        "($PROVISIONED is missing): not restarted, so it keeps the previous version. Run" \
        "sudo kiosk provision, then: sudo systemctl restart $unit"
      restart_problems+=("$unit")
      continue
    fi
    before=$(systemctl is-active "$unit" 2>/dev/null) || true
    echo "+ systemctl try-restart $unit (was ${before:-unknown})" >>"$log_path"
    if systemctl try-restart "$unit" >>"$log_path" 2>&1; then
      after=$(systemctl is-active "$unit" 2>/dev/null) || true
      # Not running before (not provisioned or enrolled yet, or stopped): nothing to restart.
      case "$before" in "" | inactive) continue ;; esac
      if [ "$after" = active ]; then continue; fi
    fi
    report_unit "$unit"
    restart_problems+=("$unit")
  done
}

unit_property() {  # unit_property UNIT NAME: one property's value ("?" when systemctl cannot say)
  systemctl show --property="$2" --value "$1" 2>/dev/null || echo "?"
}

# Says what state UNIT is in and the last line that tells why: the kiosk's last ERROR of this boot
# (its log lines read "<time> ERROR <logger>: <message>"), else the last line of its main process,
# else its last line (the unit's ExecStopPost may have the last word: "relay ... forced off").
report_unit() {
  local unit=$1 pid last=""
  last=$(journalctl --no-pager --output=cat --boot --lines=1 --unit="$unit" \
    --grep=' (ERROR|CRITICAL) ' 2>/dev/null) || last=""
  pid=$(unit_property "$unit" ExecMainPID)
  if [ -z "$last" ] && [ -n "$pid" ] && [ "$pid" != 0 ] && [ "$pid" != "?" ]; then
    last=$(journalctl --no-pager --output=cat --boot --lines=1 "_SYSTEMD_UNIT=$unit" \
      "_PID=$pid" 2>/dev/null) || last=""
  fi
  if [ -z "$last" ]; then
    last=$(journalctl --no-pager --output=cat --boot --lines=1 --unit="$unit" 2>/dev/null) ||
      last=""
  fi
  # Only the state and the result: the exit status and the restart count are reset by the restart
  # just tried (a unit waiting to start again shows status 0); the log line tells the reason.
  say "  WARNING: $unit is not running after the update: $(unit_property "$unit" ActiveState)" \
    "($(unit_property "$unit" SubState)), result $(unit_property "$unit" Result)"
  say "    its last log line: ${last:-(none)}"
}

next_steps() {
  local unit
  cat <<EOF | tee -a "$log_path"

FitFlow Kiosk is installed. Next:
  1. sudo kiosk provision     # cloud enrolment, owner password, door and relay settings
  2. sudo kiosk selftest      # camera, relay, LED, buzzer, clock, cloud, disk, database
  3. sudo systemctl restart ${enabled_services[*]}
The door (fitflow-scanner) starts only once step 1 has set the relay's polarity.
Config: $CONFIG   Data: $DATA_DIR   Log of this run: $LOG_FILE
Run this script again at any time to update or repair the installation.
EOF
  for unit in "${restart_problems[@]}"; do
    say "NOTE: $unit needs a look (see above): journalctl -u $unit; kiosk selftest"
  done
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
  install_camera_packages
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
