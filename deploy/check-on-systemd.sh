#!/usr/bin/env bash
# Checks the installer on a real systemd, before each release (slow: not part of every CI run).
#
#   sudo deploy/check-on-systemd.sh [--workdir DIR] [--mirror URL] [--keep]
#   deploy/check-on-systemd.sh --print-mirror     the Debian mirror it would use, then exit
#
# It builds a Debian 12 arm64 root with debootstrap (emulated with qemu-user on another
# architecture), boots it with systemd-nspawn, and as an owner would: installs FitFlow Kiosk from
# this working tree, reboots (the door must stay off: not provisioned), points the camera at
# replayed frames and the pins at gpiozero's mock, provisions against a reference cloud on
# 127.0.0.1 (`kiosk cloud serve`, run from this tree's .venv), installs again (the update: OpenCV
# comes with the replay camera; the scanner, crash-looping without its frames, is reported and
# the update still exits 0), checks the three services, runs `kiosk selftest`, reboots and checks
# them again. Prints PASS/FAIL per step and exits 0 only when every step passed.
#
# Needs root, the package registries (Debian's mirror for debootstrap and apt, PyPI for pip), the
# tree's .venv (./dev creates it) and debootstrap, systemd-nspawn, qemu-user-static and
# binfmt-support (installed with apt-get when missing). The mirror is the bookworm one named in
# /etc/apt/sources.list* unless --mirror says. The base root is cached in DIR (default
# /var/tmp/fitflow-systemd-check); every run boots a fresh copy of it. Logs go to DIR/run-<time>/.
# --keep leaves that run's machine root in place for a look inside.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly REPO=${SCRIPT_DIR%/deploy}
readonly SUITE=bookworm
readonly ARCH=arm64
readonly MACHINE_NAME=fitflow-check
readonly CONFIG=/etc/fitflow-kiosk/kiosk.toml
readonly FRAMES=/var/lib/fitflow-kiosk/check-frames
readonly SERVICES=(fitflow-scanner fitflow-sync fitflow-web)
# Under emulation a boot takes about a minute, an install several: the waits are generous, and
# each ends early on the event it waits for.
readonly BOOT_WAIT_S=900
readonly SERVICE_WAIT_S=300
# Where the apt sources are read (a test points it elsewhere).
readonly APT_SOURCES=${FITFLOW_APT_SOURCES:-/etc/apt}

workdir=/var/tmp/fitflow-systemd-check
mirror=""
keep=false
print_mirror=false

run_dir=""
machine=""
nspawn_pid=""
machine_pid=""
cloud_pid=""
local_cas=()
results=()
failures=0

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
  echo "check-on-systemd: $*" >&2
  exit 1
}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

pass() {
  results+=("PASS  $*")
  log "PASS  $*"
}
fail() {
  results+=("FAIL  $*")
  failures=$((failures + 1))
  log "FAIL  $*"
}
note() {
  results+=("NOTE  $*")
  log "NOTE  $*"
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --workdir)
        [ $# -ge 2 ] || die "--workdir needs a folder"
        workdir=$2
        shift
        ;;
      --workdir=*) workdir=${1#--workdir=} ;;
      --mirror)
        [ $# -ge 2 ] || die "--mirror needs a URL"
        mirror=$2
        shift
        ;;
      --mirror=*) mirror=${1#--mirror=} ;;
      --keep) keep=true ;;
      --print-mirror) print_mirror=true ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        usage >&2
        die "unknown option: $1"
        ;;
    esac
    shift
  done
}

# The first Debian mirror the host's apt uses for "$SUITE main", from one-line (.list) and deb822
# (.sources) files. Never a built-in host: only what this machine is set up to reach.
find_mirror() {
  local file found
  for file in "$APT_SOURCES/sources.list" "$APT_SOURCES"/sources.list.d/*.list; do
    [ -r "$file" ] || continue
    found=$(awk -v suite="$SUITE" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) != suite) next
        for (c = i + 2; c <= NF; c++) if ($c == "main") { print $i; exit }
      }' "$file")
    if [ -n "$found" ]; then
      echo "$found"
      return 0
    fi
  done
  for file in "$APT_SOURCES"/sources.list.d/*.sources; do
    [ -r "$file" ] || continue
    # deb822: blank-line separated stanzas of "Key: value" fields.
    found=$(awk -v suite="$SUITE" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") &&
            (" " comps " ") ~ / main / && uris != "") { split(uris, u, " "); print u[1]; found = 1 }
        types = suites = comps = uris = ""
      }
      /^[ \t]*$/ { flush(); if (found) exit; next }
      /^#/ { next }
      tolower($1) == "types:" { $1 = ""; types = $0 }
      tolower($1) == "uris:" { $1 = ""; uris = $0 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      tolower($1) == "components:" { $1 = ""; comps = $0 }
      END { if (!found) flush() }' "$file" | sed 's/^ *//')
    if [ -n "$found" ]; then
      echo "$found"
      return 0
    fi
  done
  return 1
}

require_host() {
  [ "$(id -u)" -eq 0 ] || die "must be root (try: sudo $0)"
  local missing=() tool package
  for tool in debootstrap:debootstrap systemd-nspawn:systemd-container nsenter:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
  done
  if [ "$(uname -m)" != aarch64 ]; then
    [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null 2>&1 || missing+=(binfmt-support)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} on this host"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null ||
      die "cannot install ${missing[*]}: run apt-get install ${missing[*]}"
  fi
  if [ "$(uname -m)" != aarch64 ]; then
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
      mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
        die "cannot mount binfmt_misc: arm64 programs cannot run on this $(uname -m) host"
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 ||
      die "cannot register qemu-aarch64 with binfmt_misc"
    # F: the interpreter is opened now, so it also works inside the machine's root.
    grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
      die "qemu-aarch64 is registered without the F flag: install qemu-user-static (not qemu-user)"
  fi
  for package in "$REPO/.venv/bin/kiosk" "$REPO/.venv/bin/python"; do
    [ -x "$package" ] || die "$package is missing: run ./dev once (it makes .venv)"
  done
  "$REPO/.venv/bin/python" -c 'import fastapi' 2>/dev/null ||
    die "the reference cloud needs .venv with the cloud extra: run ./dev once"
}

# The base root, made once and kept: debootstrap under emulation takes a quarter of an hour.
ensure_base() {
  local base=$workdir/base-$SUITE-$ARCH
  if [ -e "$base/.complete" ]; then
    log "base root $base (cached; remove it to rebuild)"
    return 0
  fi
  rm -rf "$base.partial"
  log "debootstrap $SUITE $ARCH from $mirror into $base (slow under emulation)"
  if ! nice -n 19 debootstrap --arch="$ARCH" --variant=minbase \
    --include=systemd,systemd-sysv,dbus,ca-certificates,apt "$SUITE" "$base.partial" "$mirror" \
    >"$workdir/debootstrap.log" 2>&1; then
    tail -n 20 "$workdir/debootstrap.log" >&2
    die "debootstrap failed; the log is $workdir/debootstrap.log"
  fi
  touch "$base.partial/.complete"
  mv "$base.partial" "$base"
}

make_machine() {
  local base=$workdir/base-$SUITE-$ARCH
  machine=$run_dir/machine
  log "machine root $machine (a copy of the base)"
  cp -a --reflink=auto "$base" "$machine"
  rm -f "$machine/.complete"
  echo "$MACHINE_NAME" >"$machine/etc/hostname"
  echo "deb $mirror $SUITE main" >"$machine/etc/apt/sources.list"
  # The working tree as it is now, as an owner's clone on the device.
  mkdir -p "$machine/root/fitflow-kiosk"
  tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./.hypothesis \
    --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=__pycache__ -cf - . |
    tar -C "$machine/root/fitflow-kiosk" -xf -
  mkdir -p "$workdir/cache/apt/partial" "$workdir/cache/pip"
  # The certificate authorities this host adds to Debian's (a proxy's, a company's): the machine
  # reaches the registries the way this host does. A Pi needs none of this.
  local_cas=()
  if [ -d /usr/local/share/ca-certificates ]; then
    mapfile -t local_cas < <(find /usr/local/share/ca-certificates -name '*.crt' -type f)
  fi
  if [ ${#local_cas[@]} -gt 0 ]; then
    mkdir -p "$machine/usr/local/share/ca-certificates"
    cp "${local_cas[@]}" "$machine/usr/local/share/ca-certificates/"
  fi
}

trust_local_cas() {
  [ ${#local_cas[@]} -gt 0 ] || return 0
  in_machine update-ca-certificates >/dev/null 2>&1 ||
    die "update-ca-certificates failed in the machine"
  note "the machine trusts this host's own certificate authorities too" \
    "($(printf '%s\n' "${local_cas[@]}" | xargs -n 1 basename | paste -sd' '))"
}

# -- the machine -----------------------------------------------------------------------------------

boot() {  # boot N: boots the machine; its console goes to boot-N.log
  local log_file=$run_dir/boot-$1.log options=()
  # Without systemd on this host there is no machined to register with, nor a scope to run in.
  if [ ! -d /run/systemd/system ]; then options+=(--register=no --keep-unit); fi
  log "booting the machine (boot $1; console: $log_file)"
  nice -n 19 systemd-nspawn --boot --directory="$machine" --machine="$MACHINE_NAME" \
    --console=passive "${options[@]}" \
    --bind="$workdir/cache/apt:/var/cache/apt/archives" --bind="$workdir/cache/pip:/root/.cache/pip" \
    >"$log_file" 2>&1 &
  nspawn_pid=$!
  machine_pid=""
  local deadline=$((SECONDS + BOOT_WAIT_S)) state=""
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$nspawn_pid" 2>/dev/null || {
      tail -n 20 "$log_file" >&2
      die "systemd-nspawn exited while booting; see $log_file"
    }
    if [ -z "$machine_pid" ]; then
      machine_pid=$(ps -o pid= --ppid "$nspawn_pid" | head -n 1 | tr -d ' ') || machine_pid=""
    fi
    if [ -n "$machine_pid" ]; then
      state=$(in_machine systemctl is-system-running --wait 2>/dev/null) || true
      case "$state" in running | degraded) break ;; esac
    fi
    sleep 2
  done
  case "$state" in
    running) log "booted: running" ;;
    degraded) log "booted: degraded ($(in_machine systemctl --failed --plain --no-legend | awk '{print $1}' | paste -sd' '))" ;;
    *) die "the machine did not finish booting within $BOOT_WAIT_S s (state: ${state:-unknown})" ;;
  esac
}

# Runs a command inside the booted machine, as root, with a clean environment.
in_machine() {
  nsenter --target "$machine_pid" --mount --uts --ipc --net --pid --root --wd -- \
    /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}

# Reboots the machine: systemd shuts everything down (the scanner's ExecStopPost included), the
# container ends, and it boots again.
reboot_machine() {  # reboot_machine N
  log "rebooting the machine"
  in_machine systemctl reboot >/dev/null 2>&1 || true
  wait "$nspawn_pid" || true
  nspawn_pid=""
  boot "$1"
}

stop_machine() {
  [ -n "$nspawn_pid" ] || return 0
  if kill -0 "$nspawn_pid" 2>/dev/null; then
    in_machine systemctl poweroff >/dev/null 2>&1 || kill -TERM "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" || true
  fi
  nspawn_pid=""
}

opencv_installed() {
  # shellcheck disable=SC2016  # ${Status} is dpkg-query's field, not the shell's
  in_machine dpkg-query -W -f='${Status}' python3-opencv 2>/dev/null | grep -q ' installed$'
}

unit_state() {  # unit_state UNIT: "ActiveState/SubState"
  in_machine systemctl show --property=ActiveState --value "$1" | tr -d '\n'
  printf '/'
  in_machine systemctl show --property=SubState --value "$1"
}

wait_active() {  # wait_active UNIT: true once it is active (running), false after SERVICE_WAIT_S
  local deadline=$((SECONDS + SERVICE_WAIT_S))
  while [ $SECONDS -lt $deadline ]; do
    [ "$(in_machine systemctl is-active "$1" 2>/dev/null)" = active ] && return 0
    sleep 2
  done
  return 1
}

# -- emulation limits --------------------------------------------------------------------------

# qemu-user cannot do everything systemd asks of the kernel. Each probe runs a transient unit with
# one option; what fails is lifted by a drop-in for this check only, and reported as a NOTE.
probe_emulation() {
  local unit
  if ! in_machine systemd-run --quiet --wait --property=LoadCredential=probe:/etc/hostname \
    /bin/true >/dev/null 2>&1; then
    note "emulation: LoadCredential= fails (\"Failed to set up credentials\"); lifted for" \
      "systemd-sysusers and systemd-tmpfiles-setup(-dev) (the kiosk's units use no credentials)"
    for unit in systemd-sysusers systemd-tmpfiles-setup systemd-tmpfiles-setup-dev; do
      mkdir -p "$machine/etc/systemd/system/$unit.service.d"
      printf '[Service]\nLoadCredential=\n' >"$machine/etc/systemd/system/$unit.service.d/emulation.conf"
    done
  fi
  if ! in_machine systemd-run --quiet --wait --property=PrivateNetwork=yes /bin/true \
    >/dev/null 2>&1; then
    note "emulation: PrivateNetwork= fails (\"Failed to set up network namespacing\"); lifted" \
      "for fitflow-scanner and fitflow-backup by a drop-in: their no-network isolation is NOT" \
      "checked here (it is on a real Pi)"
    for unit in fitflow-scanner fitflow-backup; do
      mkdir -p "$machine/etc/systemd/system/$unit.service.d"
      printf '# check-on-systemd.sh: qemu-user cannot set up a network namespace\n[Service]\nPrivateNetwork=no\n' \
        >"$machine/etc/systemd/system/$unit.service.d/emulation.conf"
    done
  fi
  in_machine systemctl daemon-reload
}

# -- the reference cloud on this host -----------------------------------------------------------------

free_port() {
  "$REPO/.venv/bin/python" -c \
    'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

json_field() {  # json_field KEY: that field of the JSON object on stdin
  "$REPO/.venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# The reference cloud of this tree (the one the machine installs), with .venv's dependencies.
cloud() { PYTHONPATH=$REPO "$REPO/.venv/bin/kiosk" cloud "$@"; }

start_cloud() {
  local db=sqlite:///$run_dir/cloud.db gym deadline
  cloud_port=$(free_port)
  gym=$(cloud init --db "$db" --org "Release check" --gym "Check gym" --timezone Europe/Berlin \
    --json | json_field gym_id)
  enrolment_code=$(cloud enrolment-code --db "$db" --gym "$gym" --ttl-minutes 120 --json |
    json_field code)
  # Not through cloud(): $! must be the server itself, for cleanup to stop it. It does not keep
  # the lock (fd 9) either.
  PYTHONPATH=$REPO "$REPO/.venv/bin/kiosk" cloud serve --db "$db" --host 127.0.0.1 \
    --port "$cloud_port" --log-level warning >"$run_dir/cloud.log" 2>&1 9>&- &
  cloud_pid=$!
  deadline=$((SECONDS + 120))
  until curl -fsS "http://127.0.0.1:$cloud_port/healthz" >/dev/null 2>&1; do
    kill -0 "$cloud_pid" 2>/dev/null || die "the reference cloud exited; see $run_dir/cloud.log"
    [ $SECONDS -lt $deadline ] || die "the reference cloud did not answer within 120 s"
    sleep 1
  done
  log "reference cloud at http://127.0.0.1:$cloud_port (gym $gym)"
}

cleanup() {
  stop_machine
  if [ -n "$cloud_pid" ] && kill -0 "$cloud_pid" 2>/dev/null; then
    kill -TERM "$cloud_pid" 2>/dev/null || true
    wait "$cloud_pid" 2>/dev/null || true
  fi
  if [ -n "$machine" ] && ! $keep; then rm -rf "$machine"; fi
}

# -- the steps -----------------------------------------------------------------------------------

install_run() {  # install_run N: runs the installer from the tree (output in install-N.log)
  local started=$SECONDS code=0
  log "install $1: deploy/install.sh --unattended (output: $run_dir/install-$1.log)"
  in_machine nice -n 19 /root/fitflow-kiosk/deploy/install.sh --unattended \
    >"$run_dir/install-$1.log" 2>&1 || code=$?
  install_seconds=$((SECONDS - started))
  return $code
}

step_first_install() {
  if install_run 1; then
    pass "first install: exit 0 in $((install_seconds / 60)) min $((install_seconds % 60)) s"
  else
    tail -n 30 "$run_dir/install-1.log" >&2
    fail "first install failed (see $run_dir/install-1.log)"
    return 1
  fi
  if opencv_installed; then
    fail "OpenCV was installed for the Camera Module (camera.backend = picamera2)"
  else
    pass "no OpenCV for the Camera Module (camera.backend = picamera2)"
  fi
  if in_machine runuser -u nobody -- /usr/local/bin/kiosk config check >/dev/null 2>&1; then
    pass "kiosk config check works without root"
  else
    fail "kiosk config check fails without root"
  fi
}

step_door_stays_off() {
  local condition
  condition=$(in_machine systemctl show --property=ConditionResult --value fitflow-scanner.service)
  if [ "$(in_machine systemctl is-enabled fitflow-scanner.service)" = enabled ] &&
    [ "$(in_machine systemctl is-active fitflow-scanner.service)" != active ] &&
    [ "$condition" = no ]; then
    pass "after a reboot before provisioning the scanner is enabled but not started" \
      "(ConditionPathExists= unmet)"
  else
    fail "after a reboot before provisioning the scanner is $(unit_state fitflow-scanner)," \
      "condition result '$condition'"
  fi
  if wait_active fitflow-web.service; then
    pass "fitflow-web runs after the reboot (no password yet: nobody can log in)"
  else
    fail "fitflow-web is $(unit_state fitflow-web) after the reboot"
  fi
}

# The owner's edits: replayed frames instead of a camera, gpiozero's mock pins, the page on this
# host's loopback (the machine shares this host's network).
configure_for_check() {
  in_machine sed -i \
    -e 's|^backend = "picamera2"|backend = "replay"|' \
    -e "s|^replay_path = \"\"|replay_path = \"$FRAMES\"|" \
    -e 's|^fps = 30|fps = 2|' \
    -e 's|^pin_factory = "auto"|pin_factory = "mock"|' \
    -e 's|^host = "0.0.0.0"|host = "127.0.0.1"|' \
    -e "s|^port = 8080|port = $web_port|" "$CONFIG"
  if in_machine /usr/local/bin/kiosk config check >/dev/null &&
    in_machine /usr/local/bin/kiosk config show | grep -q "\"replay_path\": \"$FRAMES\""; then
    pass "config set for the check: replay camera ($FRAMES), mock pins, page on 127.0.0.1:$web_port"
  else
    fail "the check's config edits did not take (see $CONFIG in the machine)"
    return 1
  fi
}

step_provision() {
  local out
  in_machine sh -c 'umask 077; echo "release-check-owner-pw" >/root/owner-pw.txt'
  if out=$(in_machine /usr/local/bin/kiosk provision --non-interactive \
    --cloud "http://127.0.0.1:$cloud_port" --code "$enrolment_code" --name "release check" \
    --owner-password-file /root/owner-pw.txt --door-id check-door --relay-pin 17 \
    --relay-active-low --pulse-ms 500 2>&1); then
    echo "$out" >"$run_dir/provision.log"
    pass "kiosk provision enrolled the door against the local cloud"
  else
    echo "$out" >"$run_dir/provision.log"
    fail "kiosk provision failed: $(tail -n 1 "$run_dir/provision.log")"
    return 1
  fi
  if in_machine test -e "$CONFIG.provisioned"; then
    pass "provisioning wrote $CONFIG.provisioned: the door may start"
  else
    fail "provisioning did not write $CONFIG.provisioned"
  fi
  in_machine systemctl restart "${SERVICES[@]}" >/dev/null 2>&1 || true
}

# The update while the scanner crash-loops (its replay folder is not there yet): OpenCV comes with
# the replay camera, the scanner's failure is reported, the install still succeeds.
step_update() {
  local state
  state=$(unit_state fitflow-scanner)
  log "before the update the scanner is $state (no frames yet: it cannot start)"
  if install_run 2; then
    pass "second install (update) with a crash-looping scanner: exit 0 in" \
      "$((install_seconds / 60)) min $((install_seconds % 60)) s"
  else
    tail -n 30 "$run_dir/install-2.log" >&2
    fail "second install (update) failed (see $run_dir/install-2.log)"
  fi
  if grep -q 'WARNING: fitflow-scanner.service is not running after the update' \
    "$run_dir/install-2.log" &&
    grep -q 'its last log line: .' "$run_dir/install-2.log"; then
    pass "the update reported the scanner's state and last log line:" \
      "$(grep -m1 'its last log line:' "$run_dir/install-2.log" | sed 's/^ *//')"
  else
    fail "the update did not report the failing scanner (see $run_dir/install-2.log)"
  fi
  if opencv_installed; then
    pass "OpenCV installed for camera.backend = replay"
  else
    fail "OpenCV is missing although camera.backend = replay"
  fi
}

step_services() {
  local unit status
  # Frames for the replay camera: the test card, 600 frames at 2 frames/s (5 minutes, then the
  # replay ends and systemd starts the scanner again). The copies are links made from this host:
  # 600 emulated `ln` would take minutes.
  local i
  in_machine sh -c "mkdir -p $FRAMES.new && kiosk testcard --out $FRAMES.new/card-000.png >/dev/null"
  for i in $(seq -w 1 599); do ln -f "$machine$FRAMES.new/card-000.png" "$machine$FRAMES.new/card-$i.png"; done
  in_machine sh -c "chown -R fitflow:fitflow $FRAMES.new && mv $FRAMES.new $FRAMES"
  for unit in "${SERVICES[@]}"; do
    if wait_active "$unit.service"; then
      pass "$unit is active"
    else
      fail "$unit is $(unit_state "$unit") (journal: journalctl -u $unit in the machine)"
    fi
  done
  for unit in fitflow-sync fitflow-web; do
    log "$unit hardening: $(in_machine systemd-analyze security --no-pager "$unit.service" 2>/dev/null |
      tail -n 1 | sed 's/^ *//')"
  done
  # The sync agent has talked to the cloud: the replica came down, and the door's decision on
  # the test card (unknown_code) went up.
  local deadline=$((SECONDS + SERVICE_WAIT_S))
  status=""
  while [ $SECONDS -lt $deadline ]; do
    status=$(in_machine /usr/local/bin/kiosk status --json 2>/dev/null) || status=""
    if [ -n "$status" ] && echo "$status" | "$REPO/.venv/bin/python" -c \
      'import json, sys; s = json.load(sys.stdin)
sys.exit(s["replica"]["synced_at"] is None or s["journal"]["synced"] < 1)'; then
      break
    fi
    sleep 5
  done
  echo "$status" >"$run_dir/status.json"
  if [ -n "$status" ] && echo "$status" | "$REPO/.venv/bin/python" -c \
    'import json, sys; s = json.load(sys.stdin); sys.exit(s["journal"]["synced"] < 1)'; then
    pass "the sync agent pulled the replica and uploaded the door's check-ins (status.json)"
  else
    fail "within $SERVICE_WAIT_S s the sync agent did not pull the replica and upload a check-in" \
      "(last kiosk status: $run_dir/status.json)"
  fi
  if curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$web_port/" 2>/dev/null |
    grep -q '^[23]'; then
    pass "the owner page answers on 127.0.0.1:$web_port"
  else
    fail "the owner page does not answer on 127.0.0.1:$web_port"
  fi
}

step_selftest() {
  if in_machine /usr/local/bin/kiosk selftest --camera-seconds 60 >"$run_dir/selftest.log" 2>&1; then
    pass "kiosk selftest: no PROBLEM ($(grep -c WARNING "$run_dir/selftest.log" || true) warnings;" \
      "$run_dir/selftest.log)"
  else
    fail "kiosk selftest found a PROBLEM: $(grep -m3 PROBLEM "$run_dir/selftest.log" | paste -sd';')"
  fi
}

step_after_reboot() {
  local unit
  for unit in "${SERVICES[@]}"; do
    if wait_active "$unit.service"; then
      pass "after a reboot, provisioned: $unit started at boot"
    else
      fail "after a reboot, provisioned: $unit is $(unit_state "$unit")"
    fi
  done
}

summary() {
  local line
  echo
  echo "=== check-on-systemd: Debian $SUITE $ARCH under systemd-nspawn$([ "$(uname -m)" = aarch64 ] ||
    echo ", emulated by qemu-user on $(uname -m)")"
  for line in "${results[@]}"; do echo "$line"; done
  echo "logs: $run_dir"
  if [ "$failures" -eq 0 ]; then
    echo "RESULT: PASS"
  else
    echo "RESULT: FAIL ($failures failed)"
  fi
}

main() {
  parse_args "$@"
  if [ -z "$mirror" ]; then mirror=$(find_mirror) || mirror=""; fi
  if $print_mirror; then
    [ -n "$mirror" ] || die "no Debian $SUITE mirror in $APT_SOURCES/sources.list*: pass --mirror"
    echo "$mirror"
    exit 0
  fi
  [ -n "$mirror" ] || die "no Debian $SUITE mirror in $APT_SOURCES/sources.list*: pass --mirror URL"
  require_host
  mkdir -p "$workdir"
  exec 9>"$workdir/lock"
  flock -n 9 || die "another check is running in $workdir"
  run_dir=$workdir/run-$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$run_dir"
  trap cleanup EXIT
  web_port=$(free_port)

  ensure_base
  make_machine
  boot 1
  trust_local_cas
  probe_emulation
  if step_first_install; then
    reboot_machine 2
    step_door_stays_off
    if configure_for_check; then
      start_cloud
      if step_provision; then
        step_update
        step_services
        step_selftest
        reboot_machine 3
        step_after_reboot
      fi
    fi
  fi
  summary
  [ "$failures" -eq 0 ]
}

main "$@"
