"""deploy/install.sh end to end in a temporary root, with the system tools stubbed on PATH.

The stubs (apt-get, apt-cache, dpkg, systemctl, journalctl, useradd, usermod, groupadd, userdel,
getent, id, chown, python3 and the venv's python and kiosk) log every call and keep just enough
state (users, groups, enabled units) for the installer to see the effect of its own earlier calls,
so a second run shows what idempotence means: same files, same modes, no second user, the owner's
config untouched. The venv's python runs the real interpreter for a script on stdin (the
installer reads camera.backend through kiosk.config) and the venv's `kiosk config` and
`kiosk provision` are the real ones.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_units import parse_unit

# A long file: it starts first on a fresh clone (tests/conftest.py orders the files).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "deploy" / "install.sh"
UNINSTALL = REPO / "deploy" / "uninstall.sh"
SYSTEMD_CHECK = REPO / "deploy" / "check-on-systemd.sh"
EXAMPLE = REPO / "deploy" / "kiosk.example.toml"
CONFIG = "/etc/fitflow-kiosk/kiosk.toml"
UNIT_FILES = sorted(p.name for p in (REPO / "systemd").iterdir())
REAL_KIOSK = Path(sys.executable).parent / "kiosk"
APT_NUMPY = "1.24.2"

BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n'

# Every stub starts by logging its name and arguments, one line per call. (Shell expansions, not
# basename or touch: an install calls the stubs hundreds of times, and each extra process counts.)
_LOG = 'echo "${0##*/} $*" >>"$STUB_LOG"\n'

STUBS = {
    "apt-get": _LOG + 'exit "${STUB_APT_EXIT:-0}"\n',
    # `apt-cache policy PKG`: a candidate, unless PKG is in $STUB_APT_MISSING (plain Debian on a Pi
    # has no python3-picamera2 or python3-lgpio).
    "apt-cache": _LOG
    + """[ "$1" = policy ] || exit 0
case " ${STUB_APT_MISSING:-} " in
  *" $2 "*) printf '%s:\\n  Installed: (none)\\n  Candidate: (none)\\n' "$2" ;;
  *) printf '%s:\\n  Installed: (none)\\n  Candidate: 1.0-1\\n' "$2" ;;
esac
""",
    "dpkg": _LOG + '[ "$1" = --print-architecture ] && echo "${STUB_ARCH:-arm64}"\n',
    # The last line a unit's main process logged (only asked for a unit that failed to restart).
    "journalctl": _LOG + 'echo "${STUB_LAST_LOG:-}"\n',
    "chown": _LOG,
    "usermod": _LOG,
    "id": _LOG + '[ "${1:-}" = -u ] && echo "${STUB_UID:-0}"\n',
    "useradd": _LOG + 'for a; do name=$a; done; echo "$name" >>"$STUB_STATE/passwd"\n',
    "groupadd": _LOG + 'for a; do name=$a; done; echo "$name" >>"$STUB_STATE/group"\n',
    "userdel": _LOG + 'grep -vx "$1" "$STUB_STATE/passwd" >"$STUB_STATE/p.new" || true\n'
    'mv "$STUB_STATE/p.new" "$STUB_STATE/passwd"\n',
    "getent": _LOG + 'grep -qx "$2" "$STUB_STATE/$1" 2>/dev/null && echo "$2:x:999:"\n',
    # Enabled units are a set in $STUB_STATE/enabled. `is-active` says "active" for the units in
    # $STUB_ACTIVE, what $STUB_UNIT_STATES says ("unit=state ...") for others, else "inactive".
    # `try-restart` fails for the units in $STUB_RESTART_FAILS (a crash-looping scanner); `show`
    # tells a failing state.
    "systemctl": _LOG
    + """cmd=$1; shift
: >>"$STUB_STATE/enabled"
if [ "$cmd" = show ]; then
  case "$1" in
    --property=ActiveState) echo activating ;;
    --property=SubState) echo auto-restart ;;
    --property=Result) echo exit-code ;;
    --property=ExecMainPID) echo 4242 ;;
  esac
  exit 0
fi
for u; do
  case "$u" in --*) continue ;; esac
  case "$cmd" in
    enable) grep -qx "$u" "$STUB_STATE/enabled" || echo "$u" >>"$STUB_STATE/enabled" ;;
    disable) grep -vx "$u" "$STUB_STATE/enabled" >"$STUB_STATE/e.new" || true
             mv "$STUB_STATE/e.new" "$STUB_STATE/enabled" ;;
    try-restart) case " ${STUB_RESTART_FAILS:-} " in *" $u "*) exit 1 ;; esac ;;
    is-active)
      state=inactive
      case " ${STUB_ACTIVE:-} " in *" $u "*) state=active ;; esac
      for pair in ${STUB_UNIT_STATES:-}; do [ "${pair%%=*}" = "$u" ] && state=${pair#*=}; done
      echo "$state"
      [ "$state" = active ] || exit 3 ;;
  esac
done
""",
    # `python3 -m venv [...] DIR` makes a stub venv: bin/python and pyvenv.cfg.
    "python3": _LOG
    + """for a; do dir=$a; done
mkdir -p "$dir/bin"
cp "$STUB_BIN/venv-python.template" "$dir/bin/python"
chmod +x "$dir/bin/python"
case " $* " in
  *" --system-site-packages "*) echo "include-system-site-packages = true" >"$dir/pyvenv.cfg" ;;
  *) echo "include-system-site-packages = false" >"$dir/pyvenv.cfg" ;;
esac
""",
    # The venv's python: apt's numpy is importable; `-m pip install` installs a stub kiosk.
    "venv-python.template": 'echo "venv-python $*" >>"$STUB_LOG"\n'
    + """if [ "$1" = - ]; then exec "$STUB_REAL_PYTHON" "$@"; fi
if [ "$1" = -c ]; then
  case "$2" in *numpy*) echo "${STUB_NUMPY:-1.24.2}" ;; esac
  exit 0
fi
if [ "$1 $2 $3" = "-m pip install" ]; then
  for a; do src=$a; done
  [ -f "$src/pyproject.toml" ] && [ -d "$src/kiosk" ] || { echo "no source in $src"; exit 1; }
  [ ! -e "$src/.venv" ] || { echo "the copy of the source holds .venv"; exit 1; }
  [ ! -e "$src/tests" ] && [ ! -e "$src/docs" ] || { echo "the copy holds the tests or docs"; exit 1; }
  echo "$src" >>"$STUB_STATE/pip-sources"
  cp "$STUB_BIN/kiosk.template" "$(dirname "$0")/kiosk"
  chmod +x "$(dirname "$0")/kiosk"
fi
""",
    # The installed kiosk: `config` and `provision` are the real ones.
    "kiosk.template": 'echo "kiosk $*" >>"$STUB_LOG"\n'
    + """case "$1" in
  config | provision) exec "$STUB_REAL_KIOSK" "$@" ;;
  *) exit 0 ;;
esac
""",
}


@dataclass
class Rig:
    """A temporary root plus stubbed tools; ``run`` executes a deploy script against it."""

    tmp: Path
    root: Path
    bin: Path
    state: Path
    log: Path

    def run(self, *args: str, script: Path = INSTALL, **env: str) -> subprocess.CompletedProcess:
        full_env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.tmp),
            "LANG": "C.UTF-8",
            "FITFLOW_ROOT": str(self.root),
            "STUB_LOG": str(self.log),
            "STUB_STATE": str(self.state),
            "STUB_BIN": str(self.bin),
            "STUB_REAL_KIOSK": str(REAL_KIOSK),
            "STUB_REAL_PYTHON": sys.executable,
            "FITFLOW_PYTHON": str(self.bin / "python3"),
            **env,
        }
        return subprocess.run(
            ["bash", str(script), *args],
            env=full_env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    def install(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        result = self.run("--unattended", *args, **env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def calls(self, tool: str | None = None) -> list[str]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line for line in lines if tool is None or line.split(" ", 1)[0] == tool]

    def path(self, system_path: str) -> Path:
        return self.root / system_path.lstrip("/")

    def make_pi(self) -> None:
        """Make the root look like a Raspberry Pi's (the installer reads the device tree)."""
        model = self.path("/proc/device-tree/model")
        model.parent.mkdir(parents=True, exist_ok=True)
        model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")  # the file ends in a NUL byte

    def venv_kiosk(self, *args: str) -> subprocess.CompletedProcess:
        """The installed ``kiosk`` (the stub venv's; provision and config are the real ones)."""
        return subprocess.run(
            [str(self.path("/opt/fitflow-kiosk/venv/bin/kiosk")), *args],
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.tmp), "LANG": "C.UTF-8",
                 "STUB_LOG": str(self.log), "STUB_REAL_KIOSK": str(REAL_KIOSK)},
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
        )  # fmt: skip

    def enabled(self) -> set[str]:
        path = self.state / "enabled"
        return set(path.read_text().split()) if path.exists() else set()

    def chowns(self) -> set[tuple[str, str]]:
        """(owner, path relative to the root) for every chown the scripts asked for; a folder's
        owner is prefixed with ``-h `` (the link itself, never what it points to)."""
        result = set()
        for line in self.calls("chown"):
            *flags, owner, path = line.split(" ")[1:]
            owner = " ".join([*flags, owner])
            result.add((owner, "/" + str(Path(path).relative_to(self.root))))
        return result


@pytest.fixture
def rig(tmp_path) -> Rig:
    root, bin_dir, state = tmp_path / "root", tmp_path / "bin", tmp_path / "state"
    for d in (root / "etc", bin_dir, state):
        d.mkdir(parents=True)
    (root / "etc" / "os-release").write_text(BOOKWORM)
    (state / "group").write_text("video\n")  # gpio exists only on Raspberry Pi OS
    for name, body in STUBS.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
    return Rig(tmp_path, root, bin_dir, state, tmp_path / "calls.log")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: ./dev test installs it (apt-get install shellcheck)"
    scripts = [*sorted((REPO / "deploy").glob("*.sh")), REPO / "dev", REPO / ".ci" / "run"]
    assert {INSTALL, UNINSTALL, SYSTEMD_CHECK} <= set(scripts)
    result = subprocess.run(
        [shellcheck, "--external-sources", *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_twice_converges_and_keeps_the_owners_config(rig):
    first = rig.install()
    assert "sudo kiosk provision" in first.stdout and "sudo kiosk selftest" in first.stdout
    assert (
        "restart fitflow-scanner.service fitflow-sync.service fitflow-web.service\n" in first.stdout
    )
    link = rig.path("/usr/local/bin/kiosk")
    assert os.readlink(link) == "/opt/fitflow-kiosk/venv/bin/kiosk"

    config = rig.path("/etc/fitflow-kiosk/kiosk.toml")
    assert config.read_text() == EXAMPLE.read_text()
    # Readable by everyone (`kiosk config check` without sudo): the config holds no secrets.
    assert mode(config) == 0o644
    assert mode(rig.path("/etc/fitflow-kiosk")) == 0o755
    assert mode(rig.path("/var/lib/fitflow-kiosk")) == 0o750
    assert mode(rig.path("/var/lib/fitflow-kiosk/backups")) == 0o750
    ownership = {
        ("root:root", "/etc/fitflow-kiosk/kiosk.toml"),
        ("-h root:root", "/etc/fitflow-kiosk"),
        ("-h fitflow:fitflow", "/var/lib/fitflow-kiosk"),
        ("-h fitflow:fitflow", "/var/lib/fitflow-kiosk/backups"),
    }
    assert rig.chowns() == ownership
    units = rig.path("/etc/systemd/system")
    assert sorted(p.name for p in units.iterdir()) == UNIT_FILES
    for name in UNIT_FILES:
        assert (units / name).read_text() == (REPO / "systemd" / name).read_text()
        assert mode(units / name) == 0o644
    assert rig.enabled() == {
        "fitflow-scanner.service",
        "fitflow-sync.service",
        "fitflow-web.service",
        "fitflow-backup.timer",
    }
    assert rig.calls("useradd") == [
        "useradd --system --user-group --groups gpio,video --home-dir /var/lib/fitflow-kiosk "
        "--no-create-home --shell /usr/sbin/nologin --comment FitFlow Kiosk fitflow"
    ]
    assert rig.calls("groupadd") == ["groupadd --system gpio"]
    assert rig.calls("python3") == [
        f"python3 -m venv --clear --system-site-packages {rig.path('/opt/fitflow-kiosk/venv')}"
    ]
    log = rig.path("/var/log/fitflow-kiosk-install.log")
    assert log.read_text().count("=== ") == 1

    # The owner edits the config; things get broken; the installer runs again (= repair).
    owner_config = EXAMPLE.read_text().replace('id = "door-1"', 'id = "front-door"')
    config.write_text(owner_config)
    config.chmod(0o666)
    (units / "fitflow-sync.service").unlink()
    (units / "fitflow-scanner.service").write_text("# damaged\n")
    rig.log.unlink()

    rig.install()

    assert config.read_text() == owner_config
    assert mode(config) == 0o644
    assert rig.chowns() == ownership
    for name in UNIT_FILES:
        assert (units / name).read_text() == (REPO / "systemd" / name).read_text()
    assert rig.calls("useradd") == [] and rig.calls("groupadd") == []
    assert rig.calls("usermod") == ["usermod -aG gpio,video fitflow"]
    assert rig.calls("python3") == []  # the venv was in place
    assert "systemctl daemon-reload" in rig.calls("systemctl")
    assert rig.enabled() == {
        "fitflow-scanner.service",
        "fitflow-sync.service",
        "fitflow-web.service",
        "fitflow-backup.timer",
    }
    assert log.read_text().count("=== ") == 2


def test_pip_installs_the_checkout_and_cannot_replace_apts_numpy_or_add_opencv(rig):
    rig.install()
    pip = [c for c in rig.calls("venv-python") if " -m pip " in c]
    constraints = rig.path("/opt/fitflow-kiosk/constraints.txt")
    # pip gets a copy of the checkout (it builds in the tree it is given), removed afterwards.
    sources = set((rig.state / "pip-sources").read_text().split())
    assert len(sources) == 1
    (source,) = sources
    assert not Path(source).exists()
    assert pip == [
        "venv-python -m pip install --disable-pip-version-check --no-input -q "
        f"--constraint {constraints} {source}",
        "venv-python -m pip install --disable-pip-version-check --no-input -q "
        f"--no-deps --force-reinstall {source}",
    ]
    pins = [line for line in constraints.read_text().splitlines() if not line.startswith("#")]
    assert f"numpy=={APT_NUMPY}" in pins
    assert {"opencv-python<0", "opencv-python-headless<0"} <= set(pins)


def _names(requirements: list[str]) -> set[str]:
    """The distribution names of requirement strings (``"psycopg[binary]>=3.1"`` -> psycopg)."""
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_installer_gets_the_device_and_none_of_the_cloud():
    # The installer installs the checkout with no extra (the test above): the core dependencies
    # are exactly what a Pi gets, so they must hold the door, the sync agent and the owner page,
    # and nothing of the reference cloud, the tests or the bench.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    assert {"numpy", "zxing-cpp", "gpiozero", "httpx", "starlette", "jinja2", "uvicorn"} <= core
    assert not core & {"fastapi", "pydantic", "psycopg", "opencv-python-headless", "pyzbar"}
    assert not core & {"pytest", "hypothesis", "ruff", "playwright", "import-linter"}
    assert {"fastapi", "pydantic"} <= extras["cloud"]
    # The PostgreSQL driver is only useful to the cloud, so asking for it brings the cloud.
    assert "fitflow-kiosk[cloud]" in project["optional-dependencies"]["postgres"]
    (itself,) = [
        r for r in project["optional-dependencies"]["dev"] if r.startswith("fitflow-kiosk")
    ]
    assert {"vision", "pyzbar", "cloud", "postgres"} <= set(
        re.findall(r"\w+", itself.split("[")[1])
    )
    assert {"pytest", "hypothesis", "ruff", "playwright", "import-linter"} <= extras["dev"]
    # Every dependency has a lower bound (an older release may lack what the code uses).
    for reqs in [project["dependencies"], *project["optional-dependencies"].values()]:
        for req in reqs:
            assert req.startswith("fitflow-kiosk[") or ">=" in req, req


def test_the_device_processes_load_no_cloud_framework():
    # What the door, the sync agent, the owner page and the command line load, as they start, on
    # a device without the cloud extra: never FastAPI or pydantic. (The import contracts forbid
    # the imports in the source; this checks what a real start loads.)
    probe = (
        "import sys\n"
        "import kiosk.door.loop, kiosk.sync.agent, kiosk.web.app, kiosk.ops.selftest\n"
        "from kiosk.cli import build_parser\n"
        "build_parser()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'fastapi', 'pydantic'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_apt_packages_come_from_the_list_and_the_pi_only_ones_only_on_a_pi(rig):
    rig.install()
    (install,) = [c for c in rig.calls("apt-get") if " install " in c]
    assert {"python3-venv", "libzbar0", "python3-pyzbar"} <= set(install.split())
    assert "python3-picamera2" not in install.split()
    assert "--no-install-recommends" in install.split()
    # Both wait for a dpkg lock held by the Pi's own unattended upgrades instead of failing.
    (update,) = [c for c in rig.calls("apt-get") if " update " in c]
    for call in (install, update):
        assert call.startswith("apt-get -o DPkg::Lock::Timeout=300 "), call

    rig.make_pi()
    rig.log.unlink()
    rig.install()
    (install,) = [c for c in rig.calls("apt-get") if " install " in c]
    assert {"python3-picamera2", "python3-lgpio"} <= set(install.split())
    # Every package is known to apt before any is installed.
    asked = {c.split()[-1] for c in rig.calls("apt-cache")}
    assert set(install.split()[install.split().index("--no-install-recommends") + 1 :]) <= asked


def opencv_installs(rig: Rig) -> list[str]:
    return [c for c in rig.calls("apt-get") if " install " in c and "python3-opencv" in c.split()]


def test_opencv_only_for_a_usb_camera_or_replayed_files(rig, tmp_path):
    # The Camera Module (the example's picamera2) needs numpy and zxing-cpp, not OpenCV's 300
    # packages.
    rig.make_pi()
    result = rig.install()
    assert opencv_installs(rig) == []
    assert 'no OpenCV: camera.backend = "picamera2"' in result.stdout

    # The owner switches to a USB camera: the next run (the update) brings OpenCV.
    config = rig.path("/etc/fitflow-kiosk/kiosk.toml")
    config.write_text(config.read_text().replace('backend = "picamera2"', 'backend = "opencv"'))
    rig.log.unlink()
    result = rig.install()
    (install,) = opencv_installs(rig)
    assert install.startswith("apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-rec")
    assert 'OpenCV for camera.backend = "opencv"' in result.stdout
    # It comes after the config is in place (it decides) and before the units are restarted.
    calls = rig.calls()
    assert calls.index(install) < calls.index("systemctl daemon-reload")


@pytest.mark.parametrize(
    ("seed", "flags"),
    [
        ('[camera]\nbackend = "replay"\nreplay_path = "/srv/frames"\n', []),
        ("", ["--with-opencv"]),
    ],
)
def test_opencv_for_replayed_files_or_when_asked(rig, tmp_path, seed, flags):
    seed_file = tmp_path / "seed.toml"
    seed_file.write_text(seed or EXAMPLE.read_text())
    rig.install("--config", str(seed_file), *flags)
    assert len(opencv_installs(rig)) == 1


def test_the_door_does_not_start_before_provisioning_sets_the_relay(rig):
    """Enabled at install, so a reboot would start the scanner on the example's guess of the relay
    polarity. It does not: its unit waits for the marker only `kiosk provision` writes, and with
    the condition unmet systemd runs neither ExecStart (kiosk run) nor ExecStopPost (relay-off)."""
    rig.install()
    assert "fitflow-scanner.service" in rig.enabled()
    units = rig.path("/etc/systemd/system")
    drives_pins = {"run", "relay-off"}
    conditions = {}
    for unit in units.iterdir():
        sections = parse_unit(unit)
        commands = [
            shlex.split(value)[1]
            for key in ("ExecStart", "ExecStopPost", "ExecStartPre")
            for value in sections.get("Service", {}).get(key, [])
        ]
        if drives_pins & set(commands):
            conditions[unit.name] = sections["Unit"]["ConditionPathExists"]
    assert conditions == {"fitflow-scanner.service": [f"{CONFIG}.provisioned"]}
    marker = rig.path(f"{CONFIG}.provisioned")

    def door_would_start() -> bool:  # systemd's ConditionPathExists=, judged in the rig's root
        return marker.exists()

    assert not door_would_start()

    # Provisioning without the polarity (no flag, not asked) leaves the door off and says so.
    config = str(rig.path(CONFIG))
    provision = rig.venv_kiosk("provision", "--config", config, "--non-interactive", "--door-id",
                               "front")  # fmt: skip
    assert provision.returncode == 0, provision.stderr
    assert "set the relay's polarity, or the door does not start" in provision.stdout
    assert not door_would_start()

    # Setting it lets the door start.
    provision = rig.venv_kiosk("provision", "--config", config, "--non-interactive",
                               "--relay-active-low")  # fmt: skip
    assert provision.returncode == 0, provision.stderr
    assert "relay set active-low: the door may start" in provision.stdout
    assert door_would_start()
    assert "gpio.relay_active_high = false" in marker.read_text()

    # An update keeps it; a config seeded afresh (the old one removed) drops it: the marker
    # vouched for the old file's wiring.
    rig.install()
    assert door_would_start()
    rig.path(CONFIG).unlink()
    result = rig.install()
    assert not door_would_start()
    assert "run kiosk provision again" in result.stdout


def test_a_crash_looping_scanner_is_reported_and_the_update_still_succeeds(rig):
    rig.install()
    rig.log.unlink()
    rig.path(f"{CONFIG}.provisioned").write_text("gpio.relay_active_high = false\n")
    result = rig.run(
        "--unattended",
        STUB_UNIT_STATES="fitflow-scanner.service=activating",
        STUB_RESTART_FAILS="fitflow-scanner.service",
        STUB_LAST_LOG="2026-01-01 ERROR kiosk: replay camera: /srv/frames does not exist",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "WARNING: fitflow-scanner.service is not running after the update: activating "
        "(auto-restart), result exit-code\n" in result.stdout
    )
    assert (
        "its last log line: 2026-01-01 ERROR kiosk: replay camera: /srv/frames does not exist"
        in result.stdout
    )
    assert "NOTE: fitflow-scanner.service needs a look" in result.stdout
    # The kiosk's last ERROR line of this boot, not the last line (its ExecStopPost's).
    assert rig.calls("journalctl") == [
        "journalctl --no-pager --output=cat --boot --lines=1 --unit=fitflow-scanner.service "
        "--grep= (ERROR|CRITICAL) "
    ]
    # The other services were restarted all the same, one at a time.
    restarts = [c for c in rig.calls("systemctl") if c.startswith("systemctl try-restart")]
    assert restarts == [
        f"systemctl try-restart {unit}"
        for unit in ("fitflow-scanner.service", "fitflow-sync.service", "fitflow-web.service")
    ]
    assert "FitFlow Kiosk is installed" in result.stdout


def test_a_scanner_caught_between_two_attempts_is_reported_too(rig):
    # Crash-looping, it spends seconds deactivating (its ExecStopPost releases the relay): then
    # try-restart does nothing and succeeds. The state after it tells.
    rig.install()
    rig.path(f"{CONFIG}.provisioned").write_text("gpio.relay_active_high = false\n")
    result = rig.run(
        "--unattended",
        STUB_UNIT_STATES="fitflow-scanner.service=deactivating",
        STUB_LAST_LOG="2026-01-01 ERROR kiosk: no frame from the camera",
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING: fitflow-scanner.service is not running after the update" in result.stdout
    assert "its last log line: 2026-01-01 ERROR kiosk: no frame from the camera" in result.stdout

    # Units that were not running (not provisioned, not enrolled) are not restarted nor reported;
    # running ones that come back are not reported either.
    result = rig.run("--unattended", STUB_ACTIVE="fitflow-web.service")
    assert result.returncode == 0 and "WARNING" not in result.stdout


def test_a_door_started_before_its_marker_existed_is_not_stopped_by_an_update(rig):
    # Started by hand, or provisioned before provisioning wrote the marker: a restart would stop it
    # for good (its start condition is unmet), locking the gym out. It keeps running, and the
    # installer says what to do.
    rig.install()
    rig.log.unlink()
    result = rig.run("--unattended", STUB_ACTIVE="fitflow-scanner.service")
    assert result.returncode == 0, result.stderr
    assert "systemctl try-restart fitflow-scanner.service" not in rig.calls("systemctl")
    assert "systemctl try-restart fitflow-web.service" in rig.calls("systemctl")
    assert "polarity was never set by kiosk provision" in result.stdout
    assert "Run sudo kiosk provision, then: sudo systemctl restart" in result.stdout

    rig.path(f"{CONFIG}.provisioned").write_text("gpio.relay_active_high = false\n")
    rig.log.unlink()
    result = rig.run("--unattended", STUB_ACTIVE="fitflow-scanner.service")
    assert "systemctl try-restart fitflow-scanner.service" in rig.calls("systemctl")
    assert "WARNING" not in result.stdout


def test_plain_debian_on_a_pi_is_refused_before_anything_is_installed(rig):
    rig.make_pi()
    result = rig.run("--unattended", STUB_APT_MISSING="python3-picamera2 python3-lgpio")
    assert result.returncode == 1
    assert "have no python3-picamera2 python3-lgpio" in result.stderr
    assert "Raspberry Pi OS Lite (64-bit)" in result.stderr
    assert "Nothing was installed" in result.stderr
    assert [c for c in rig.calls("apt-get") if " install " in c] == []
    assert rig.calls("useradd") == [] and rig.calls("python3") == []
    assert not rig.path("/opt/fitflow-kiosk").exists()


def test_a_package_apt_does_not_have_is_refused_before_anything_is_installed(rig):
    result = rig.run("--unattended", STUB_APT_MISSING="libzbar0")
    assert result.returncode == 1
    assert "apt has no package libzbar0" in result.stderr
    assert [c for c in rig.calls("apt-get") if " install " in c] == []


def test_an_apt_failure_stops_the_install_and_says_where_the_log_is(rig):
    result = rig.run("--unattended", STUB_APT_EXIT="100")
    assert result.returncode == 1
    assert "failed: apt-get -o DPkg::Lock::Timeout=300 install" in result.stderr
    assert "/var/log/fitflow-kiosk-install.log" in result.stderr
    assert rig.calls("useradd") == [] and rig.calls("python3") == []
    assert "WARNING: apt-get update failed" in result.stdout  # offline update is only a warning


def test_a_pre_seeded_config_is_installed_once_and_never_over_the_owners(rig, tmp_path):
    seed = tmp_path / "seed.toml"
    seed.write_text('[door]\nid = "side-door"\n\n[gpio]\nrelay_pin = 5\n')
    rig.install("--config", str(seed))
    config = rig.path("/etc/fitflow-kiosk/kiosk.toml")
    assert config.read_text() == seed.read_text()

    other = tmp_path / "other.toml"
    other.write_text('[door]\nid = "other"\n')
    result = rig.install(f"--config={other}")
    assert config.read_text() == seed.read_text()
    assert "was not installed" in result.stdout


def test_an_invalid_seed_config_is_refused_before_it_is_installed(rig, tmp_path):
    seed = tmp_path / "bad.toml"
    seed.write_text('[door]\nid = "x"\ncolour = "red"\n')
    result = rig.run("--unattended", "--config", str(seed))
    assert result.returncode != 0
    assert "bad.toml is not a valid configuration" in result.stderr
    assert not rig.path("/etc/fitflow-kiosk/kiosk.toml").exists()
    assert "colour" in rig.path("/var/log/fitflow-kiosk-install.log").read_text()


def test_the_owner_page_is_enabled_with_the_door_and_restarted_on_update(rig):
    rig.install()
    services = {"fitflow-scanner.service", "fitflow-sync.service", "fitflow-web.service"}
    assert services <= rig.enabled()
    result = rig.install()
    assert (
        "restart fitflow-scanner.service fitflow-sync.service fitflow-web.service" in result.stdout
    )


def test_refuses_when_not_root(rig):
    result = rig.run("--unattended", STUB_UID="1000")
    assert result.returncode == 1
    assert "must be root" in result.stderr
    assert rig.calls("apt-get") == [] and not rig.path("/var/log").exists()


@pytest.mark.parametrize(
    "os_release",
    [
        'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=jammy\n',
        'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_CODENAME=trixie\n',
        'PRETTY_NAME="Raspbian GNU/Linux 11 (bullseye)"\nID=raspbian\nVERSION_CODENAME=bullseye\n',
    ],
)
def test_refuses_an_unsupported_os(rig, os_release):
    rig.path("/etc/os-release").write_text(os_release)
    result = rig.run("--unattended")
    assert result.returncode == 1
    name = os_release.split('"')[1]
    assert f"refusing to run on {name}" in result.stderr
    assert "bookworm" in result.stderr
    assert rig.calls("apt-get") == []


@pytest.mark.parametrize("arch", ["armhf", "armel"])
def test_refuses_32_bit_raspberry_pi_os_before_changing_anything(rig, arch):
    # zxing-cpp (2.2 or newer) has no 32-bit ARM wheel and Debian's is 1.4: refused, clearly.
    release = (
        'PRETTY_NAME="Raspbian GNU/Linux 12 (bookworm)"\nID=raspbian\nVERSION_CODENAME=bookworm\n'
    )
    rig.path("/etc/os-release").write_text(release)
    result = rig.run("--unattended", STUB_ARCH=arch)
    assert result.returncode == 1
    assert f"refusing to run on 32-bit Raspbian GNU/Linux 12 (bookworm) ({arch})" in result.stderr
    assert "Raspberry Pi OS Lite (64-bit)" in result.stderr and "zxing-cpp" in result.stderr
    assert rig.calls("apt-get") == [] and not rig.path("/var/log").exists()


def test_accepts_64_bit_pi_os_and_amd64_refuses_other_architectures(rig):
    rig.install(STUB_ARCH="arm64")
    rig.install(STUB_ARCH="amd64")
    result = rig.run("--unattended", STUB_ARCH="riscv64")
    assert result.returncode == 1 and "arm64 (a Raspberry Pi) or amd64 only" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--purge"], "--purge only goes with --uninstall"), (["--frobnicate"], "unknown option")],
)
def test_bad_options_are_refused(rig, args, message):
    result = rig.run(*args)
    assert result.returncode == 1
    assert message in result.stderr


def test_uninstall_keeps_the_data_and_the_config(rig):
    rig.install()
    database = rig.path("/var/lib/fitflow-kiosk/kiosk.db")
    database.write_text("journal")
    config = rig.path("/etc/fitflow-kiosk/kiosk.toml")
    owners = EXAMPLE.read_text().replace("relay_active_high = true", "relay_active_high = false")
    assert owners != EXAMPLE.read_text()
    config.write_text(owners)  # the door's wiring: a reinstall must not seed the default
    rig.log.unlink()

    result = rig.run(script=UNINSTALL)

    assert result.returncode == 0, result.stderr
    assert database.read_text() == "journal"
    assert config.read_text() == owners
    assert "/etc/fitflow-kiosk (the config)" in result.stdout
    assert not rig.path("/opt/fitflow-kiosk").exists()
    assert not os.path.lexists(rig.path("/usr/local/bin/kiosk"))
    assert list(rig.path("/etc/systemd/system").iterdir()) == []
    stops = {
        c.split()[-1] for c in rig.calls("systemctl") if c.startswith("systemctl disable --now")
    }
    assert stops == set(UNIT_FILES)
    assert "systemctl daemon-reload" in rig.calls("systemctl")
    assert rig.enabled() == set()
    assert rig.calls("userdel") == []


def test_uninstall_purge_removes_the_data_and_the_user(rig):
    rig.install()
    rig.path("/var/lib/fitflow-kiosk/kiosk.db").write_text("journal")

    result = rig.run("--uninstall", "--purge")

    assert result.returncode == 0, result.stderr
    assert not rig.path("/var/lib/fitflow-kiosk").exists()
    assert not rig.path("/etc/fitflow-kiosk").exists()
    assert rig.calls("userdel") == ["userdel fitflow"]
    # The log of what happened stays.
    assert "purging" in rig.path("/var/log/fitflow-kiosk-install.log").read_text()


def test_uninstall_refuses_when_not_root(rig):
    rig.install()
    result = rig.run(script=UNINSTALL, STUB_UID="1000")
    assert result.returncode == 1 and "must be root" in result.stderr
    assert rig.path("/opt/fitflow-kiosk/venv").is_dir()


def test_the_installer_is_executable():
    for script in (INSTALL, UNINSTALL, SYSTEMD_CHECK):
        assert os.access(script, os.X_OK), f"{script} must be executable (chmod +x)"


def test_help_describes_the_modes(rig):
    result = rig.run("--help")
    assert result.returncode == 0
    for mode_text in ("--unattended", "--config FILE", "--uninstall [--purge]"):
        assert mode_text in result.stdout
    assert "the data and the config stay unless --purge" in result.stdout
    assert rig.calls() == []  # --help changes nothing


@pytest.mark.parametrize("planted", ["/var/lib/fitflow-kiosk/backups", "/var/lib/fitflow-kiosk"])
def test_a_planted_symlink_is_refused_and_its_target_left_alone(rig, tmp_path, planted):
    rig.install()
    # The service user owns its data folder: it could swap backups/ for a link to a root file.
    target = tmp_path / "shadow-dir"
    target.mkdir()
    target.chmod(0o700)
    os.chown(target, 12345, 12345)
    link = rig.path(planted)
    if link.is_dir():
        shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    rig.log.unlink()

    result = rig.run("--unattended")

    assert result.returncode == 1
    assert f"refusing to use {planted}: it is a symbolic link" in result.stderr
    assert mode(target) == 0o700
    assert (target.stat().st_uid, target.stat().st_gid) == (12345, 12345)
    assert not [c for c in rig.calls("chown") if str(target) in c or c.endswith(planted)]
    assert os.path.islink(link)  # left as found, for the admin to look at


# -- deploy/check-on-systemd.sh (run before a release; here only what needs no root) -------------


def check_script(*args: str, sources: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if sources is not None:
        env["FITFLOW_APT_SOURCES"] = str(sources)
    return subprocess.run(
        ["bash", str(SYSTEMD_CHECK), *args], env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip


def test_the_systemd_check_takes_debians_mirror_from_this_hosts_apt_sources(tmp_path):
    # Only a mirror this host already uses, never a built-in one: deb822 and one-line files, the
    # first entry that serves "bookworm main" (not -security, -updates, or another archive).
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
    )
    (tmp_path / "sources.list.d" / "other.list").write_text(
        "deb https://packages.example/apt cloud-sdk-bookworm main\n"
    )
    result = check_script("--print-mirror", sources=tmp_path)
    assert (result.returncode, result.stdout) == (0, "http://mirror.example/debian\n"), (
        result.stderr
    )

    (tmp_path / "sources.list").write_text(
        "deb [signed-by=/usr/share/keyrings/x.gpg] http://old.example/debian bookworm main\n"
    )
    result = check_script("--print-mirror", sources=tmp_path)
    assert result.stdout == "http://old.example/debian\n"

    empty = tmp_path / "empty"
    empty.mkdir()
    result = check_script("--print-mirror", sources=empty)
    assert result.returncode == 1 and "pass --mirror" in result.stderr
    result = check_script(
        "--print-mirror", "--mirror", "http://given.example/debian", sources=empty
    )
    assert result.stdout == "http://given.example/debian\n"


def test_the_systemd_check_explains_itself():
    result = check_script("--help")
    assert result.returncode == 0
    for text in ("--workdir DIR", "--mirror URL", "--keep", "PASS/FAIL", "before each release"):
        assert text in result.stdout


def test_an_installed_config_made_invalid_is_reported_and_the_update_still_succeeds(rig):
    rig.make_pi()
    rig.install()
    config = rig.path("/etc/fitflow-kiosk/kiosk.toml")
    config.write_text(config.read_text() + '\n[relay]\ncolour = "red"\n')
    rig.log.unlink()
    result = rig.install()
    assert "WARNING: /etc/fitflow-kiosk/kiosk.toml is not valid: the door will not start" in (
        result.stdout
    )
    # Its camera.backend cannot be trusted: OpenCV is neither added nor guessed.
    assert "cannot tell camera.backend from /etc/fitflow-kiosk/kiosk.toml" in result.stdout
    assert opencv_installs(rig) == []
    assert "unknown section [relay]" in rig.path("/var/log/fitflow-kiosk-install.log").read_text()
    assert config.read_text().endswith('colour = "red"\n')  # the owner's file is left as it was
