"""``kiosk provision``: make a freshly installed kiosk this gym's door, safely re-runnable.

It does these things, asking for each (interactive) or taking flags (``--non-interactive``):

1. **Enrolment**: cloud address + single-use enrolment code -> the device's credentials file
   (``sync.credentials_file``, mode 0600), through the same path as ``kiosk enrol``. A device that
   is already enrolled keeps its enrolment unless ``--re-enrol`` is given.
2. **Owner password** for the owner's page: stored only as a salted scrypt hash in
   ``web.password_file`` (mode 0600, see ``kiosk.ops.owner_password``); never echoed or logged. There
   is no default password.
3. **Door settings** in the config file: ``door.id``, ``gpio.relay_pin``,
   ``gpio.relay_active_high``, ``gpio.pulse_ms`` and ``site.timezone`` (validated with zoneinfo;
   taken from the cloud's answer when not given).
4. **The door may start**: once the relay's polarity has been set by provisioning (asked, or
   ``--relay-active-high``/``--relay-active-low``), the marker ``<config>.provisioned`` is written
   beside the config (``provisioned_marker``). fitflow-scanner.service starts only when it exists
   (``ConditionPathExists=``): until then ``gpio.relay_active_high`` is the example's guess, and a
   wrong guess holds an active-low relay closed, the turnstile released. For the same reason the
   polarity question offers no default until the marker exists.
5. Nothing else: every other key and every comment of the config file is kept.

Order matters for safety: every answer is validated first, the enrolment (the one step that can
be refused) runs next, and only then are the config, the marker and the password written. The
config is edited as text (comments stay), the result is parsed back and compared with what was
intended, validated with ``kiosk.config`` from a temporary file, the old file kept as
``<name>.bak`` and the new one renamed into place. Re-running with the same answers changes
nothing.

When run as root (the normal case: the config lives in /etc), secret files are given to the owner
of the folder they are in (the kiosk's user, who owns /var/lib/fitflow-kiosk), so the services
can read them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kiosk.config import (
    Config,
    ConfigError,
    check_setting,
    default_config,
    load_config,
    parse_setting,
    render_example,
)
from kiosk.data.files import (
    SymlinkRefused,
    refuse_symlink,
    write_atomically,
    write_private_file,
)

# The settings provisioning manages, in the order they are asked for.
MANAGED: tuple[tuple[str, str], ...] = (
    ("door.id", "Door id (recorded with every check-in)"),
    ("site.timezone", "Gym time zone (IANA name, e.g. Europe/Berlin)"),
    ("gpio.relay_pin", "Relay GPIO (BCM number)"),
    ("gpio.relay_active_high", "Relay closes on a high output (active-high)?"),
    ("gpio.pulse_ms", "Relay pulse per entry, ms"),
)
MAX_TRIES = 5
_YES_NO = frozenset({"gpio.relay_active_high"})
POLARITY_HINT = (
    '  (the relay module\'s label tells: "low level trigger" = active-low, answer n; '
    '"high level trigger" = active-high, answer y)\n'
)

Ask = Callable[[str], str]


class ProvisionError(Exception):
    """Provisioning stopped; the message says what and how to fix it. ``exit_code`` follows the
    ``kiosk`` convention (1 runtime/cloud, 2 configuration or usage)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Plan:
    """What to do. ``settings``: dotted key -> checked value to write. ``cloud``/``code``: enrol
    (when ``code`` is set). ``password``: the new owner password, or None to leave it."""

    settings: dict[str, Any] = field(default_factory=dict)
    cloud: str | None = None
    code: str | None = None
    name: str | None = None
    re_enrol: bool = False
    password: str | None = field(default=None, repr=False)


# -- editing the TOML text (pure) -----------------------------------------------------------------

_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*)\s*\]\s*(?:#.*)?")
_KEY_LINE = re.compile(r"(\s*)([A-Za-z0-9_-]+)\s*=")


def toml_value(value: Any) -> str:
    """A scalar as TOML text (bool, int, float, str)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are valid TOML escapes
    raise TypeError(f"cannot write {type(value).__name__} to the config")


def _set_nested(document: dict[str, Any], dotted: str, value: Any) -> None:
    *tables, key = dotted.split(".")
    node = document
    for name in tables:
        node = node.setdefault(name, {})
    node[key] = value


def edit_toml(text: str, changes: Mapping[str, Any]) -> str:
    """``text`` with each ``table.key`` of ``changes`` set: an existing ``key = ...`` line in
    ``[table]`` is replaced (its trailing comment goes), a missing key is added at the end of its
    table, a missing table at the end of the file. Everything else is kept as written.

    The result is parsed back and must equal the original document with exactly these changes;
    anything else (keys written as dotted keys or inline tables, text that is not TOML) raises
    ProvisionError saying which settings to set by hand.
    """
    try:
        original = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"the config file is not valid TOML ({exc}); fix it first") from None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    table = ""
    found: dict[str, int] = {}  # dotted key -> line index
    ends: dict[str, int] = {}  # table -> index after its last key line (or its header)
    for index, line in enumerate(lines):
        header = _HEADER.fullmatch(line.rstrip("\n"))
        if header:
            table = re.sub(r"\s+", "", header.group(1))
            ends.setdefault(table, index + 1)
            continue
        key = _KEY_LINE.match(line)
        if key and table:
            found[f"{table}.{key.group(2)}"] = index
            ends[table] = index + 1
    inserts: dict[int, list[str]] = {}
    appended: dict[str, list[str]] = {}
    for dotted, value in changes.items():
        table, _, key = dotted.rpartition(".")
        text_line = f"{key} = {toml_value(value)}\n"
        if dotted in found:
            indent = _KEY_LINE.match(lines[found[dotted]]).group(1)
            lines[found[dotted]] = indent + text_line
        elif table in ends:
            inserts.setdefault(ends[table], []).append(text_line)
        else:
            appended.setdefault(table, []).append(text_line)
    for index in sorted(inserts, reverse=True):
        lines[index:index] = inserts[index]
    for table, new_lines in appended.items():
        lines += ["\n", f"[{table}]\n", *new_lines]
    result = "".join(lines)

    expected = copy.deepcopy(original)
    for dotted, value in changes.items():
        _set_nested(expected, dotted, value)
    try:
        edited = tomllib.loads(result)
    except tomllib.TOMLDecodeError:
        edited = None
    if edited != expected:
        wanted = ", ".join(f"{k} = {toml_value(v)}" for k, v in changes.items())
        raise ProvisionError(
            f"the config file is written in a form provisioning cannot edit safely (dotted keys "
            f"or inline tables); nothing was changed. Set these by hand: {wanted}"
        )
    return result


# -- files --------------------------------------------------------------------------------------


def _refuse_symlink(path: Path) -> None:
    try:
        refuse_symlink(path)
    except SymlinkRefused as exc:
        raise ProvisionError(str(exc)) from None


def write_file_atomically(
    path: Path,
    data: bytes,
    *,
    mode: int,
    owner: tuple[int, int] | None = None,
    check: Callable[[Path], None] | None = None,
) -> None:
    """``kiosk.data.files.write_atomically``, with a symbolic link at ``path`` a ProvisionError."""
    _refuse_symlink(path)
    write_atomically(path, data, mode=mode, owner=owner, check=check)


def write_secret_file(path: Path, data: bytes) -> None:
    """``kiosk.data.files.write_private_file``, with a symbolic link at ``path`` a ProvisionError."""
    _refuse_symlink(path)
    write_private_file(path, data)


@dataclass(frozen=True)
class ConfigOutcome:
    changed: bool
    created: bool
    backup: Path | None


def apply_config(path: Path, changes: Mapping[str, Any]) -> ConfigOutcome:
    """Write ``changes`` into the config file at ``path`` (see ``edit_toml``); a missing file
    starts from the documented example. The new text is validated by ``kiosk.config`` (file only,
    no environment overrides) before it replaces the old file, which is kept as ``<name>.bak``.
    The new file and the backup keep the old file's mode, owner and group (the config is
    installed 0640 root:fitflow so the services can read it). Nothing is written when nothing
    changes. Raises ProvisionError (nothing changed) when the result would be invalid, ``path``
    or its backup is a symbolic link, or it cannot be written."""
    path = Path(path)
    _refuse_symlink(path)
    try:
        created = not path.exists()
        raw = render_example().encode("utf-8") if created else path.read_bytes()
        old = None if created else path.stat()
        # Edited with universal newlines (as read_text would); the backup keeps the raw bytes.
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(
            f"cannot read the config file {path}: {_reason(exc)} (run it with sudo?)"
        ) from None
    new_text = edit_toml(text, changes)
    if old is not None and new_text == text:
        return ConfigOutcome(changed=False, created=False, backup=None)
    mode = 0o644 if old is None else old.st_mode & 0o777
    owner = None if old is None else (old.st_uid, old.st_gid)

    backup = None if old is None else path.with_name(path.name + ".bak")

    def before_rename(tmp: Path) -> None:
        try:
            load_config(tmp, None)
        except ConfigError as exc:
            raise ProvisionError(
                f"the new configuration would be invalid, so {path} was left as it was:\n{exc}"
            ) from None
        if backup is not None:
            write_file_atomically(backup, raw, mode=mode, owner=owner)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(
            path, new_text.encode("utf-8"), mode=mode, owner=owner, check=before_rename
        )
    except OSError as exc:
        raise ProvisionError(
            f"cannot write the config file {path}: {_reason(exc)} (run it with sudo?)"
        ) from None
    return ConfigOutcome(changed=True, created=old is None, backup=backup)


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def read_password_file(path: str, stdin: TextIO | None = None) -> str:
    """The password in ``path`` (``-`` = standard input): its first line without the line end.
    Raises ProvisionError when unreadable or unacceptable (the message never quotes it)."""
    from kiosk.ops.owner_password import PasswordError, check_password

    try:
        if path == "-":
            import sys

            raw = (stdin or sys.stdin).readline()
        else:
            with open(path, encoding="utf-8") as handle:
                raw = handle.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"cannot read the owner password file {path}: {exc}") from None
    password = raw.removesuffix("\n").removesuffix("\r")
    try:
        check_password(password)
    except PasswordError as exc:
        raise ProvisionError(f"owner password from {path}: {exc}") from None
    return password


# -- the marker that lets the door start -------------------------------------------------------------

# The key whose value decides the relay's idle state: the marker vouches for it.
POLARITY = "gpio.relay_active_high"


def provisioned_marker(config_path: Path) -> Path:
    """Where provisioning records that the relay wiring of the config at ``config_path`` was set:
    the config's path plus ``.provisioned`` (by default /etc/fitflow-kiosk/kiosk.toml.provisioned,
    the file fitflow-scanner.service's ``ConditionPathExists=`` waits for)."""
    config_path = Path(config_path)
    return config_path.with_name(config_path.name + ".provisioned")


def marker_text(relay_pin: int, relay_active_high: bool) -> str:
    """The marker's content: what was set, for the person who finds the file."""
    return (
        "# Written by `kiosk provision`: the relay wiring in the config beside this file was set,\n"
        "# so the door (fitflow-scanner.service) may drive the relay. Without this file the door\n"
        "# does not start; `kiosk provision` writes it again.\n"
        f"gpio.relay_pin = {relay_pin}\n"
        f"gpio.relay_active_high = {toml_value(relay_active_high)}\n"
    )


def write_marker(config_path: Path) -> bool:
    """Write (or refresh) the marker of the config at ``config_path`` from what the file now says;
    True when it changed. It gets the config's mode and owner (readable, root's when installed).
    Raises ProvisionError when the config is invalid or the marker cannot be written."""
    config_path = Path(config_path)
    marker = provisioned_marker(config_path)
    try:
        config = load_config(config_path, None)
    except ConfigError as exc:
        raise ProvisionError(f"{config_path} is not valid:\n{exc}") from None
    data = marker_text(config.gpio.relay_pin, config.gpio.relay_active_high).encode("utf-8")
    _refuse_symlink(marker)
    try:
        if marker.exists() and marker.read_bytes() == data:
            return False
        info = config_path.stat()
        write_file_atomically(
            marker, data, mode=info.st_mode & 0o644, owner=(info.st_uid, info.st_gid)
        )
    except OSError as exc:
        raise ProvisionError(
            f"the config is written, but the marker {marker} that lets the door start is not: "
            f"{_reason(exc)}",
            exit_code=1,
        ) from None
    return True


# -- enrolment ------------------------------------------------------------------------------------


def current_identity(path: Path):
    """The stored ``DeviceIdentity``, None when not enrolled; ProvisionError when the file is
    there but unusable (then only ``--re-enrol`` can replace it)."""
    from kiosk.sync.identity import IdentityError, load_identity

    if not Path(path).exists():
        return None
    try:
        return load_identity(Path(path), env={})
    except IdentityError as exc:
        raise ProvisionError(f"{exc} To replace it, enrol again with --re-enrol.") from None


def enrol(path: Path, plan: Plan, *, transport: Any = None, timeout_s: float = 10.0, software: str):
    """Enrol with ``plan.cloud`` and ``plan.code`` and save the credentials (0600) at ``path``.
    Raises ProvisionError (exit 1) when the cloud refuses or cannot be reached; the old
    credentials, if any, are then kept."""
    from kiosk.sync.client import CloudClient, CloudError, EnrolmentRefused, check_cloud_url
    from kiosk.sync.identity import DeviceIdentity, identity_text

    path = Path(path)
    if path.exists() and not plan.re_enrol:
        raise ProvisionError(
            f"{path} already holds this device's credentials; add --re-enrol to replace them"
        )
    _refuse_symlink(path)  # before the single-use code is spent

    try:
        url = check_cloud_url(plan.cloud or "")
    except ValueError as exc:
        raise ProvisionError(f"cloud address: {exc}") from None
    name = plan.name or socket.gethostname()[:200] or "kiosk"
    try:
        with CloudClient(
            url, None, transport=transport, timeout_s=timeout_s, software_version=software
        ) as client:
            enrolment = client.enrol(plan.code.strip(), name, software)
    except EnrolmentRefused:
        raise ProvisionError(
            "the cloud refused the enrolment code: it is unknown, already used or expired. "
            "Ask the gym's admin page for a new code; nothing was changed.",
            exit_code=1,
        ) from None
    except CloudError as exc:
        raise ProvisionError(f"enrolment failed: {exc}; nothing was changed.", 1) from None
    identity = DeviceIdentity.from_enrolment(url, enrolment)
    # The file kiosk.sync.identity.save_identity writes, but through write_secret_file so that, as root,
    # it is handed to the service user before it appears under its name.
    text = identity_text(identity)
    try:
        write_secret_file(path, text.encode("utf-8"))
    except OSError as exc:
        raise ProvisionError(
            f"enrolled, but cannot write the credentials file {path}: {_reason(exc)}. Check that "
            f"its folder exists and belongs to the kiosk's user.",
            exit_code=1,
        ) from None
    return identity


# -- interactive questions -------------------------------------------------------------------------


def _yes_no(text: str) -> bool | None:
    answer = text.strip().lower()
    if answer in ("y", "yes", "true"):
        return True
    if answer in ("n", "no", "false"):
        return False
    return None


def _ask(ask: Ask, prompt: str) -> str:
    try:
        return ask(prompt)
    except EOFError:
        raise ProvisionError("no answer (end of input); nothing was changed") from None


def ask_yes_no(ask: Ask, out: TextIO, prompt: str, default: bool | None) -> bool:
    """Ask until y or n (at most MAX_TRIES times); a blank answer means ``default``, and is not
    accepted when ``default`` is None (a question that must be answered)."""
    shown = {True: "Y/n", False: "y/N", None: "y/n"}[default]
    for _ in range(MAX_TRIES):
        answer = _ask(ask, f"{prompt} [{shown}] ")
        if not answer.strip() and default is not None:
            return default
        value = _yes_no(answer)
        if value is not None:
            return value
        out.write("  please answer y or n\n")
    raise ProvisionError(f"no usable answer to {prompt!r}; nothing was changed")


def ask_setting(
    ask: Ask, out: TextIO, dotted: str, label: str, default: Any, shown: str | None = None
) -> Any:
    """The checked value for ``dotted``; a blank answer means ``default`` (shown as ``shown``
    when given). Yes/no settings go to ``ask_yes_no`` (``default`` None: no default)."""
    if isinstance(default, bool) or (default is None and dotted in _YES_NO):
        return ask_yes_no(ask, out, label, default)
    for _ in range(MAX_TRIES):
        answer = _ask(ask, f"{label} [{default if shown is None else shown}]: ").strip()
        if not answer:
            return default
        try:
            return parse_setting(dotted, answer)
        except ValueError as exc:
            out.write(f"  {exc}\n")
    raise ProvisionError(f"no usable value for {dotted}; nothing was changed")


def ask_password(ask_secret: Ask, out: TextIO) -> str | None:
    from kiosk.ops.owner_password import PasswordError, check_password

    for _ in range(MAX_TRIES):
        first = _ask(ask_secret, "Owner password for the page (blank to skip): ")
        if not first:
            return None
        try:
            check_password(first)
        except PasswordError as exc:
            out.write(f"  {exc}\n")
            continue
        if _ask(ask_secret, "The same password again: ") != first:
            out.write("  the two passwords differ; again\n")
            continue
        return first
    raise ProvisionError("no usable owner password; nothing was changed")


def interview(
    config: Config,
    plan: Plan,
    *,
    identity: Any,
    password_set: bool,
    ask: Ask,
    ask_secret: Ask,
    out: TextIO,
    polarity_known: bool = True,
) -> Plan:
    """Fill ``plan`` by asking, with the current values (or the flags given) as defaults.

    Two questions differ: when this run enrols and no time zone was given, a blank time zone
    answer leaves ``site.timezone`` out of the plan so the gym's zone from the cloud is used after
    enrolment; and the relay polarity has no default unless the config file (``polarity_known``)
    or a flag says, because a wrong guess holds the door open when idle."""
    from kiosk.sync.client import check_cloud_url

    out.write("Enrolment with the cloud\n")
    enrol_now = identity is None or plan.re_enrol
    if identity is not None and not plan.re_enrol:
        out.write(
            f"  enrolled as device {identity.device_id} of {identity.gym_name} "
            f"({identity.cloud_url})\n"
        )
        enrol_now = plan.re_enrol = ask_yes_no(
            ask, out, "  Enrol again with a new code (new device identity)?", False
        )
    if enrol_now:
        default_url = plan.cloud or (identity.cloud_url if identity is not None else "")
        for _ in range(MAX_TRIES):
            answer = _ask(ask, f"  Cloud address [{default_url or 'blank: skip'}]: ").strip()
            url = answer or default_url
            if not url:
                plan.cloud = plan.code = None
                break
            try:
                plan.cloud = check_cloud_url(url)
            except ValueError as exc:
                out.write(f"  {exc}\n")
                continue
            code = _ask(ask, f"  Enrolment code{f' [{plan.code}]' if plan.code else ''}: ")
            plan.code = code.strip() or plan.code
            if plan.code:
                break
            out.write("  an enrolment code is needed (from the gym's admin page)\n")
        else:
            raise ProvisionError("no usable cloud address and code; nothing was changed")

    out.write("Door settings\n")
    current = {
        "door.id": config.door.id,
        "site.timezone": identity.timezone if identity is not None else config.site.timezone,
        "gpio.relay_pin": config.gpio.relay_pin,
        "gpio.relay_active_high": config.gpio.relay_active_high,
        "gpio.pulse_ms": config.gpio.pulse_ms,
    }
    zone_from_cloud = bool(enrol_now and plan.code) and "site.timezone" not in plan.settings
    for dotted, label in MANAGED:
        default = plan.settings.get(dotted, current[dotted])
        shown = None
        if dotted == "site.timezone" and zone_from_cloud:
            default, shown = None, "blank: the gym's, from the cloud"
        elif dotted == "gpio.relay_active_high" and dotted not in plan.settings:
            out.write(POLARITY_HINT)
            if not polarity_known:
                default = None
        value = ask_setting(ask, out, dotted, f"  {label}", default, shown)
        if value is None:
            plan.settings.pop(dotted, None)
        else:
            plan.settings[dotted] = value

    out.write("Owner page\n")
    if plan.password is None:
        change = True
        if password_set:
            change = ask_yes_no(ask, out, "  An owner password is set. Change it?", False)
        if change:
            plan.password = ask_password(ask_secret, out)
    return plan


# -- the whole run ---------------------------------------------------------------------------------


def not_permitted(path: Any, action: str = "read") -> ProvisionError:
    """The error for a file this user may not touch: provisioning edits root's files."""
    return ProvisionError(
        f"cannot {action} {path}: permission denied. `kiosk provision` edits the kiosk's system "
        f"files: run it with sudo."
    )


def _file_sets(path: Path, table: str, key: str) -> bool:
    """Whether the config file at ``path`` itself sets ``table.key`` (False when it is missing or
    not TOML: then the setting's default is only a guess)."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    section = document.get(table)
    return isinstance(section, dict) and key in section


def _load_current(path: Path, out: TextIO) -> Config:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        pass  # created below
    except PermissionError:
        raise not_permitted(path) from None
    except OSError:
        pass  # load_config names the problem
    if not path.exists():
        out.write(f"{path} does not exist yet; it will be created from the documented example\n")
        return default_config()
    try:
        return load_config(path, None)
    except ConfigError as exc:
        out.write(f"note: {path} has problems now (they must be fixed for it to be written):\n")
        out.write("".join(f"  {line}\n" for line in exc.errors))
        return default_config()


def provision(
    config_path: Path,
    plan: Plan,
    *,
    interactive: bool,
    ask: Ask = input,
    ask_secret: Ask | None = None,
    out: TextIO,
    transport: Any = None,
    software: str = "",
) -> int:
    """Run provisioning (see the module docstring); returns the exit code. ``ask``/``ask_secret``
    replace ``input``/``getpass`` (tests). Raises ProvisionError for anything that stops it,
    including a file this user may not read or write (exit 2: "run it with sudo")."""
    try:
        return _provision(
            config_path,
            plan,
            interactive=interactive,
            ask=ask,
            ask_secret=ask_secret,
            out=out,
            transport=transport,
            software=software,
        )
    except PermissionError as exc:
        # Run without root: Path.exists and friends raise instead of answering.
        raise not_permitted(exc.filename or config_path, "read or write") from None


def _provision(
    config_path: Path,
    plan: Plan,
    *,
    interactive: bool,
    ask: Ask,
    ask_secret: Ask | None,
    out: TextIO,
    transport: Any,
    software: str,
) -> int:
    from kiosk.ops.owner_password import hash_password, password_is_set

    config_path = Path(config_path)
    config = _load_current(config_path, out)
    credentials = Path(config.sync.credentials_file)
    password_file = Path(config.web.password_file)
    identity = current_identity(credentials) if not plan.re_enrol else None
    if plan.re_enrol and credentials.exists():
        with contextlib.suppress(ProvisionError):
            identity = current_identity(credentials)
    for dotted, value in plan.settings.items():
        plan.settings[dotted] = check_setting(dotted, value)

    marker = provisioned_marker(config_path)
    if interactive:
        if ask_secret is None:
            import getpass

            ask_secret = getpass.getpass
        plan = interview(
            config,
            plan,
            identity=identity,
            password_set=password_is_set(password_file),
            ask=ask,
            ask_secret=ask_secret,
            out=out,
            # The file's value counts only once provisioning set it: the example's is a guess.
            polarity_known=marker.exists() and _file_sets(config_path, "gpio", "relay_active_high"),
        )
    if plan.code and not plan.cloud:
        raise ProvisionError("an enrolment code needs the cloud address (--cloud URL)")
    if plan.cloud and not plan.code and (identity is None or plan.re_enrol):
        raise ProvisionError("enrolling needs the single-use code from the admin page (--code)")

    # 1. Enrolment first: the one step that can be refused; nothing else has changed yet.
    enrolled_now = False
    if plan.code and (identity is None or plan.re_enrol):
        identity = enrol(
            credentials,
            plan,
            transport=transport,
            timeout_s=config.sync.request_timeout_s,
            software=software,
        )
        enrolled_now = True
        out.write(
            f"enrolled as device {identity.device_id} of {identity.gym_name} (time zone "
            f"{identity.timezone}); credentials in {credentials} (mode 0600)\n"
        )
    elif identity is not None and plan.code:
        out.write(
            f"already enrolled as device {identity.device_id}; the code was not used (add "
            f"--re-enrol to enrol again)\n"
        )

    # 2. The time zone follows the cloud's gym unless given.
    if identity is not None:
        zone = plan.settings.get("site.timezone")
        if zone is None and identity.timezone != config.site.timezone:
            plan.settings["site.timezone"] = identity.timezone
            out.write(
                f"site.timezone set to the gym's time zone from the cloud: {identity.timezone}\n"
            )
        elif zone is not None and zone != identity.timezone:
            out.write(
                f"warning: the cloud says the gym's time zone is {identity.timezone}, "
                f"site.timezone is set to {zone}\n"
            )

    # 3. The config file.
    changed = False
    if plan.settings:
        outcome = apply_config(config_path, plan.settings)
        if outcome.changed:
            changed = True
            kept = f" (previous file kept as {outcome.backup})" if outcome.backup else ""
            out.write(f"{config_path} {'created' if outcome.created else 'updated'}{kept}\n")
        else:
            out.write(f"{config_path} already has these settings; not rewritten\n")

    # 4. The door may start once the polarity is set; a marker from an earlier run is refreshed.
    door_ready = marker.exists()
    if POLARITY in plan.settings:
        if write_marker(config_path):  # the config was written and checked just above
            changed = True
            level = "active-high" if plan.settings[POLARITY] else "active-low"
            out.write(f"relay set {level}: the door may start ({marker} written)\n")
        door_ready = True
    elif door_ready:
        try:
            if write_marker(config_path):
                changed = True
                out.write(f"{marker} updated to the config's relay wiring\n")
        except ProvisionError as exc:  # the marker stays as the earlier run wrote it
            out.write(f"note: {marker} was not updated: {exc}\n")

    # 5. The owner password.
    if plan.password is not None:
        from kiosk.ops.owner_password import PasswordError

        try:
            encoded = hash_password(plan.password)
        except PasswordError as exc:
            raise ProvisionError(f"owner password not set: {exc}", exit_code=1) from None
        try:
            write_secret_file(password_file, (encoded + "\n").encode("ascii"))
        except OSError as exc:
            raise ProvisionError(
                f"owner password not set: cannot write {password_file}: {_reason(exc)}",
                exit_code=1,
            ) from None
        changed = True
        out.write(f"owner password set (a salted hash in {password_file}, mode 0600)\n")

    todo = []
    if not door_ready:
        todo.append(
            "set the relay's polarity, or the door does not start: kiosk provision (or "
            "--relay-active-high / --relay-active-low)"
        )
    if identity is None:
        todo.append("enrol: kiosk provision --cloud URL --code CODE")
    if not password_is_set(password_file):
        todo.append("set the owner password: kiosk provision (or --owner-password-file FILE)")
    if todo:
        out.write("still to do:\n" + "".join(f"  - {item}\n" for item in todo))
    if enrolled_now or changed:
        out.write("restart the kiosk's services (or reboot) to use the new settings\n")
    out.write("next: `kiosk selftest` checks camera, relay, LEDs, buzzer, clock and cloud\n")
    return 0
