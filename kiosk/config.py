"""The kiosk's configuration: one TOML file, validated strictly, with environment overrides.

The schema (``SCHEMA``) is declared once, below. Everything else is derived from it: the validation,
the frozen dataclass tree the program reads (``Config``: ``config.gpio.relay_pin``,
``config.feedback.granted``...), the ``KIOSK_<SECTION>_<KEY>`` environment overrides and the
documented example file (``render_example()``, committed as ``deploy/kiosk.example.toml``).

Strict means: unknown sections and keys are errors, types are exact (a boolean is not an integer,
``1`` and ``"yes"`` are not booleans), numbers must be finite and in range, and every problem is
reported at once, each prefixed with where it came from (the file or the environment variable) and
the setting's dotted path, so ``kiosk config check`` can list everything an installer has to fix.

Secrets never live here, by design: the whole config is printable (``as_dict``) for diagnostics.
Credentials belong in the systemd credentials directory or a 0600 file of their own.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import textwrap
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hardware.protocols import Pattern
from kiosk.core.model import PolicySettings, StalePolicy
from kiosk.core.occupancy import OccupancyRules

DEFAULT_CONFIG_PATH = Path("/etc/fitflow-kiosk/kiosk.toml")
# The one KIOSK_* variable that is not a setting: it names the config file itself.
CONFIG_PATH_VARIABLE = "KIOSK_CONFIG"
ENV_PREFIX = "KIOSK_"


class ConfigError(Exception):
    """The configuration cannot be used. ``errors`` holds one line per problem, each starting
    with its source (file path or environment variable, if any) and the dotted setting path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(self.errors)


# ---------------------------------------------------------------------------------------------
# Schema vocabulary


@dataclass(frozen=True, slots=True)
class Key:
    """One setting. ``type`` is ``str``, ``int``, ``float`` or ``bool``. ``low``/``high`` bound
    numbers inclusively, in ``unit``. ``check`` is an extra rule returning the problem in words
    (phrased to follow the value, e.g. ``"is not a known IANA time zone"``) or None; ``rule`` says
    the same thing for the example file. ``optional`` (numbers only): the empty string ``""``
    means "not set", read as None (an input that is not wired); the default is then None."""

    name: str
    type: type
    default: Any
    doc: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None
    rule: str = ""
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Table:
    """One TOML table. ``name`` is dotted for nested tables (``feedback.granted``); a table without
    keys only groups its sub-tables. ``cls`` is an existing dataclass to build instead of deriving
    one (its field names must equal the keys')."""

    name: str
    doc: str
    keys: tuple[Key, ...] = ()
    cls: type | None = None


def _door_id_problem(value: str) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        return None
    return "must be 1..64 characters of A-Z a-z 0-9 . _ -"


def _zone_problem(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: malformed keys ("../x", absolute paths); OSError: a directory ("America").
        return "is not a known IANA time zone (e.g. Europe/Berlin, America/New_York, UTC)"
    return None


def _non_empty_problem(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _host_problem(value: str) -> str | None:
    # An IP address (v4 or v6) or a host name: letters, digits, dots, hyphens, colons.
    if re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", value) and value.strip(".:-"):
        return None
    return "must be an IP address (0.0.0.0, 127.0.0.1, ::) or a host name"


def _host_names_problem(value: str) -> str | None:
    # Empty, or host names separated by commas: DNS labels of letters, digits and hyphens.
    label = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    for name in value.split(","):
        name = name.strip().rstrip(".")
        if not name and not value.strip():
            continue
        if not re.fullmatch(rf"{label}(\.{label})*", name) or len(name) > 253:
            return (
                f"must be host names separated by commas (e.g. gym-door.example.lan), not {name!r}"
            )
    return None


def _pin(name: str, default: int | None, doc: str, *, optional: bool = False) -> Key:
    return Key(name, int, default, doc, unit="BCM pin number", low=2, high=27, optional=optional)


_PATTERN_KEYS = (
    Key("led", str, "none", "Which LED lights up.", choices=("green", "red", "none")),
    Key("led_blinks", int, 1, "How many times the LED lights (1 with led_off_ms 0 = solid).",
        low=1, high=20),
    Key("led_on_ms", int, 0, "How long the LED stays lit each time.", unit="ms", low=0, high=10000),
    Key("led_off_ms", int, 0, "Pause between blinks.", unit="ms", low=0, high=10000),
    Key("beeps", int, 0, "How many times the buzzer sounds (0 = silent).", low=0, high=20),
    Key("beep_on_ms", int, 0, "Length of each beep.", unit="ms", low=0, high=5000),
    Key("beep_off_ms", int, 0, "Pause between beeps.", unit="ms", low=0, high=5000),
)  # fmt: skip


def _pattern_table(name: str, doc: str, default: Pattern) -> Table:
    keys = tuple(dataclasses.replace(k, default=getattr(default, k.name)) for k in _PATTERN_KEYS)
    return Table(name, doc, keys, cls=Pattern)


# ---------------------------------------------------------------------------------------------
# The schema: the single declaration of every setting.

SCHEMA: tuple[Table, ...] = (
    Table("door",
          "This door: its name in the journal, on the owner page and in the cloud, which way it "
          "lets people through, and how it counts who is inside.", (
        Key("id", str, "door-1", "Door identifier recorded with every check-in.",
            check=_door_id_problem, rule="1..64 characters of A-Z a-z 0-9 . _ -"),
        Key("direction", str, "entry",
            "entry: the scanner lets members in. exit: an exit-side scanner; each grant counts "
            "as someone leaving (wire no passage input to it).", choices=("entry", "exit")),
        Key("passage_timeout_s", float, 5.0,
            "With gpio.passage_entry_pin wired: a grant the turnstile does not turn for within "
            "this long is annulled (the member never went in: no class used, no anti-passback, "
            "no visit counted).", unit="s", low=1, high=60),
        Key("max_visit_minutes", int, 0,
            "For a door with no exit signal: an entry counts as gone from the occupancy after "
            "this long (0 = never; leave 0 with an exit input or an exit-side scanner).",
            unit="min", low=0, high=1440),
        Key("capacity", int, 0,
            "The most people inside at once, by this door's count; members beyond it are "
            "refused as at_capacity, staff never (0 = no limit).", unit="people", low=0,
            high=100000),
    )),
    Table("site", "The gym's location: opening hours, access windows and closures use its time.", (
        Key("timezone", str, "UTC", "The gym's time zone.", check=_zone_problem,
            rule="an IANA time zone name such as Europe/Berlin"),
    )),
    Table("store", "The local SQLite database: the journal of check-ins and the member replica.", (
        Key("path", str, "/var/lib/fitflow-kiosk/kiosk.db", "Database file.",
            check=_non_empty_problem, rule="a file path"),
        Key("checkin_retention_days", int, 90,
            "How long check-ins already synced to the cloud are kept on the device (pending ones "
            "are never deleted).", unit="days", low=1, high=3650),
    )),
    Table("camera",
          "Where frames come from: picamera2 for the Pi camera, opencv for a USB webcam, replay "
          "for recorded images or a video (`kiosk demo` brings its own synthetic camera).", (
        Key("backend", str, "picamera2", "Frame source.",
            choices=("picamera2", "opencv", "replay")),
        Key("width", int, 640, "Frame width.", unit="px", low=160, high=4096),
        Key("height", int, 480, "Frame height.", unit="px", low=120, high=3072),
        Key("fps", int, 30, "Frames per second requested from the camera.", unit="frames/s",
            low=1, high=120),
        Key("device", int, 0, "OpenCV/V4L2 camera index (backend opencv only).", low=0, high=63),
        Key("replay_path", str, "",
            "Folder of images or a video file to replay; required when backend is replay."),
        Key("stale_after_s", float, 2.0,
            "No frame for this long means the camera has failed (fault feedback, owner page).",
            unit="s", low=0.2, high=60),
    )),
    Table("decoder", "How QR codes are read from frames.", (
        Key("backend", str, "zxing", "QR decoder library (zxing is much faster and more robust).",
            choices=("zxing", "pyzbar")),
        Key("motion_gate", bool, True,
            "Skip decoding a frame identical to the previous empty one (saves CPU when idle)."),
        Key("retry_on_miss", bool, True,
            "Try extra decode strategies when a code is seen but not read."),
    )),
    Table("gpio",
          "Relay, LED and buzzer wiring, in BCM pin numbers (not header positions). Wire the "
          "turnstile's grant input to the relay's normally-open contact, with a pull resistor so "
          "the relay stays off while the Pi boots.", (
        Key("pin_factory", str, "auto",
            "gpiozero pin backend: auto uses lgpio on any Raspberry Pi and refuses to run "
            "anywhere else; lgpio works on every Pi and is required on a Pi 5 (RPi.GPIO does not "
            "work there); rpigpio on a Pi 4 or older; mock simulates pins (demo, tests).",
            choices=("auto", "lgpio", "rpigpio", "mock")),
        _pin("relay_pin", 17, "Turnstile relay output."),
        Key("relay_active_high", bool, True, "true if a high output closes the relay."),
        Key("pulse_ms", int, 500, "How long the relay closes for one granted entry.", unit="ms",
            low=50, high=10000),
        Key("max_pulse_ms", int, 3000,
            "Hard maximum for any relay pulse, whatever asks for it; at least pulse_ms.",
            unit="ms", low=100, high=10000),
        _pin("green_led_pin", 27, "Green LED output."),
        _pin("red_led_pin", 22, "Red LED output."),
        _pin("buzzer_pin", 23, "Buzzer output."),
        Key("buzzer_active_high", bool, True, "true if a high output sounds the buzzer."),
        _pin("passage_entry_pin", None,
             "Input from the turnstile's entry PASS contact (or a door contact): confirms each "
             "grant, counts entries, reports tailgating. Empty = not wired.", optional=True),
        _pin("passage_exit_pin", None,
             "Input from the turnstile's exit PASS contact: counts people leaving. Empty = not "
             "wired.", optional=True),
        Key("passage_pull_up", bool, True,
            "true: a dry contact between the input pin and ground, with the Pi's pull-up (the "
            "usual wiring); false: the contact brings the pin to 3.3 V, with a pull-down."),
        Key("passage_bounce_ms", int, 50,
            "A passage input that reopens for less than this is the same closing (contact "
            "bounce).", unit="ms", low=0, high=1000),
    )),
    Table("feedback",
          "What members see and hear: one LED/buzzer pattern each for granted, denied and fault."),
    _pattern_table("feedback.granted", "Access granted: a solid green light and one short beep.",
                   Pattern(led="green", led_blinks=1, led_on_ms=1500, led_off_ms=0,
                           beeps=1, beep_on_ms=120, beep_off_ms=0)),
    _pattern_table("feedback.denied", "Access denied: red blinks and three beeps.",
                   Pattern(led="red", led_blinks=3, led_on_ms=150, led_off_ms=150,
                           beeps=3, beep_on_ms=150, beep_off_ms=100)),
    _pattern_table("feedback.fault",
                   "The kiosk cannot decide (camera stale, clock untrusted, maintenance). The "
                   "scanner repeats this pattern while the fault lasts: a silent slow red blink.",
                   Pattern(led="red", led_blinks=2, led_on_ms=500, led_off_ms=500,
                           beeps=0, beep_on_ms=0, beep_off_ms=0)),
    Table("scanner", "The door loop.", (
        Key("debounce_s", float, 3.0,
            "A code held in view is decided once; it is decided again only after it has been "
            "out of view this long. A different code is decided at once.",
            unit="s", low=0.5, high=60),
    )),
    Table("policy", "Access rules the door applies on its own, online or offline.", (
        Key("passback_minutes", float, 10.0,
            "Refuse the same member at this door for this long after an entry (0 disables).",
            unit="min", low=0, high=1440),
        Key("stale_after_hours", float, 72.0,
            "After this long without a successful sync the member replica counts as stale.",
            unit="h", low=1, high=8760),
        Key("when_stale", str, StalePolicy.PAID_THROUGH.value,
            "With a stale replica: paid_through keeps admitting members whose membership has a "
            "definite end date still ahead; refuse admits only staff.",
            choices=tuple(p.value for p in StalePolicy)),
    )),
    Table("sync",
          "The sync agent (`kiosk sync`): uploads check-ins, pulls the member replica and reports "
          "the device's health to the cloud. The device's credentials (from `kiosk enrol`) live "
          "in their own file, never here.", (
        Key("credentials_file", str, "/var/lib/fitflow-kiosk/device.json",
            "The device's credentials written by `kiosk enrol` (mode 0600). Under systemd, "
            "LoadCredential= with this file's name takes precedence.",
            check=_non_empty_problem, rule="a file path"),
        Key("interval_s", float, 30.0,
            "Time between sync rounds when nothing happens; a new check-in starts one at once.",
            unit="s", low=1, high=3600),
        Key("batch_size", int, 200, "Check-ins uploaded per request (halved if the cloud says "
            "a batch is too large).", unit="check-ins", low=1, high=500),
        Key("page_rows", int, 1000, "Replica rows asked for per page when pulling.",
            unit="rows", low=100, high=5000),
        Key("request_timeout_s", float, 10.0, "How long one request to the cloud may take.",
            unit="s", low=1, high=120),
        Key("backoff_max_s", float, 300.0,
            "Longest wait between retries while the cloud is unreachable (random, doubling up to "
            "this).", unit="s", low=1, high=3600),
        Key("wake_poll_s", float, 1.0,
            "How often the agent looks for new check-ins between rounds.",
            unit="s", low=0.1, high=60),
    )),
    Table("web",
          "The owner's page (`kiosk web`). Its password is set by `kiosk provision` and stored "
          "only as a salted scrypt hash, in its own file, never here.", (
        Key("password_file", str, "/var/lib/fitflow-kiosk/owner-password",
            "The owner password's hash, written by `kiosk provision` (mode 0600). No password "
            "file means no login: there is no default password.",
            check=_non_empty_problem, rule="a file path"),
        Key("host", str, "0.0.0.0",  # noqa: S104 (the owner's phone is on the LAN)
            "Address the page listens on: 0.0.0.0 answers on every network (the owner opens it "
            "from a phone on the gym's LAN); 127.0.0.1 only on this machine.",
            check=_host_problem, rule="an IP address or host name"),
        Key("allowed_hosts", str, "",
            "Extra host names the page answers to, separated by commas (e.g. a DNS name you gave "
            "the device). It always answers to its IP addresses, localhost, the machine's host "
            "name and host name.local; any other name in the address bar is refused (this "
            "stops DNS-rebinding attacks from web pages the owner visits).",
            check=_host_names_problem, rule="host names separated by commas, or empty"),
        Key("port", int, 8080, "TCP port of the page (below 1024 needs an extra capability).",
            low=1, high=65535),
        Key("names", str, "first_name",
            "How members' names appear in the decisions list: first_name (Alice S.), full "
            "(Alice Smith), initials (A. S.) or hidden (member).",
            choices=("first_name", "full", "initials", "hidden")),
        Key("recent", int, 20, "How many recent decisions the page shows.", unit="rows",
            low=1, high=200),
        Key("refresh_s", float, 3.0, "How often the open page updates itself.", unit="s",
            low=1, high=60),
        Key("session_idle_minutes", int, 30,
            "Sign the owner out after this long without a click (the page's own updates do not "
            "count); every session ends after 12 h regardless.", unit="min", low=5, high=1440),
    )),
    Table("logging", "Log output (the systemd journal on the device).", (
        Key("level", str, "INFO", "Least severe level written.",
            choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    )),
)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Derived structure: tables by name, sub-tables, environment names, the dataclass tree.

_TABLES = {t.name: t for t in SCHEMA}
_KEYS = {f"{t.name}.{k.name}": k for t in SCHEMA for k in t.keys}


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _leaf(name: str) -> str:
    return name.rpartition(".")[2]


# Sub-tables of each table, in schema order; "" is the document root.
_CHILDREN: dict[str, tuple[str, ...]] = {
    parent: tuple(t.name for t in SCHEMA if _parent(t.name) == parent) for parent in ("", *_TABLES)
}


def _env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", "_").upper()


_ENV = {_env_name(dotted): dotted for dotted in _KEYS}


def _dataclass(name: str, fields: list[tuple[str, type]], doc: str) -> type:
    cls = dataclasses.make_dataclass(name, fields, frozen=True, slots=True)
    # make_dataclass only takes module= from Python 3.12; set it so reprs and docs say kiosk.config.
    cls.__module__ = __name__
    cls.__doc__ = doc
    return cls


def _derive_classes() -> dict[str, type]:
    classes: dict[str, type] = {}
    # Children come after their parent in SCHEMA: build from the end so they exist first.
    for table in reversed(SCHEMA):
        if table.cls is not None:
            classes[table.name] = table.cls
            continue
        fields = [(k.name, k.type) for k in table.keys]
        fields += [(_leaf(c), classes[c]) for c in _CHILDREN[table.name]]
        cls_name = "".join(part.title() for part in table.name.split(".")) + "Config"
        classes[table.name] = _dataclass(cls_name, fields, table.doc)
    return classes


_CLASSES = _derive_classes()

Config = _dataclass(
    "Config",
    [(name, _CLASSES[name]) for name in _CHILDREN[""]],
    "The whole configuration: one attribute per section (``config.gpio.relay_pin``).",
)


# ---------------------------------------------------------------------------------------------
# Checking one value


_TYPE_WORDS = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean (true or false)",
}


def _show(value: Any) -> str:
    """A value as it would be written in TOML, cut short and escaped so one error stays one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(text)
    if isinstance(value, float | int):
        return repr(value)
    return type(value).__name__


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({_show(value)})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({_show(value)})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date/time"


def _bound(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(number)


def _unit(key: Key) -> str:
    return f" ({key.unit})" if key.unit else ""


def _checked(key: Key, value: Any) -> tuple[Any, str | None]:
    """The value normalised to the key's type (an int becomes a float for float keys), or None
    and the problem in words. An optional key's ``""`` (or None, its default) is None."""
    if key.optional and (value is None or value == ""):
        return None, None
    if key.type is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif key.type is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, key.type)
    if not ok:
        empty = ' or "" (not set)' if key.optional else ""
        return None, f"expected {_TYPE_WORDS[key.type]}{empty}, got {_describe(value)}"
    shown = _show(value)  # as the user wrote it, before an int becomes a float
    if key.type is float:
        value = float(value)
        if not math.isfinite(value):
            return None, f"{shown} is not a finite number"
    if key.low is not None and key.high is not None and not key.low <= value <= key.high:
        span = f"{_bound(key.low)}..{_bound(key.high)}"
        return None, f"{shown} is out of range {span}{_unit(key)}"
    if key.choices and value not in key.choices:
        return None, f"{shown} is not one of {', '.join(key.choices)}"
    if key.check is not None and (problem := key.check(value)) is not None:
        return None, f"{shown} {problem}"
    return value, None


_ENV_INT = re.compile(r"[+-]?[0-9]+")
_ENV_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _parse_env(key: Key, raw: str) -> tuple[Any, str | None]:
    """An environment string parsed as the key's type (TOML-like spelling), or the problem."""
    text = raw.strip()
    if key.type is str:
        return raw, None
    if key.optional and not text:
        return None, None
    if key.type is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true", None
        return None, f"{_show(raw)} is not true or false"
    if key.type is int:
        if _ENV_INT.fullmatch(text):
            return int(text), None
        return None, f"{_show(raw)} is not an integer"
    if _ENV_FLOAT.fullmatch(text):
        return float(text), None
    return None, f"{_show(raw)} is not a number"


def _suggest(name: str, candidates: list[str], form: Callable[[str], str] = str) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {form(close[0])}?" if close else ""


def _key_name(name: str) -> str:
    """A TOML key as written in a dotted path: quoted when it is not a bare key."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class _Loader:
    """Accumulates settings and errors from one file and one environment."""

    values: dict[str, Any]
    # Where each explicitly set value came from: "path: " or "VARIABLE: ".
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    invalid: set[str] = dataclasses.field(default_factory=set)
    errors: list[str] = dataclasses.field(default_factory=list)

    def set(self, where: str, dotted: str, value: Any, *, from_env: bool = False) -> None:
        key = _KEYS[dotted]
        problem: str | None = None
        if from_env:
            value, problem = _parse_env(key, value)
        if problem is None:
            value, problem = _checked(key, value)
        self.sources[dotted] = where
        if problem is not None:
            self.invalid.add(dotted)
            self.errors.append(f"{where}{dotted}: {problem}")
            return
        self.invalid.discard(dotted)
        self.values[dotted] = value

    def read_file(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.errors.append(f"{path}: config file not found")
            return
        except IsADirectoryError:
            self.errors.append(f"{path}: is a directory, not a config file")
            return
        except PermissionError:
            self.errors.append(f"{path}: cannot read the config file (permission denied)")
            return
        except OSError as exc:
            self.errors.append(f"{path}: cannot read the config file ({exc.strerror or exc})")
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.errors.append(f"{path}: not UTF-8 text (bad byte at offset {exc.start})")
            return
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # The parser's message ends with "(at line L, column C)".
            self.errors.append(f"{path}: invalid TOML: {exc}")
            return
        self._walk(f"{path}: ", "", document)

    def _walk(self, where: str, table: str, data: dict[str, Any]) -> None:
        keys = [k.name for k in _TABLES[table].keys] if table else []
        children = {_leaf(c): c for c in _CHILDREN[table]}
        for name, value in data.items():
            dotted = f"{table}.{name}" if table else name
            if name in keys:
                self.set(where, dotted, value)
            elif name in children:
                if isinstance(value, dict):
                    self._walk(where, dotted, value)
                else:
                    self.errors.append(
                        f"{where}{dotted}: expected a table [{dotted}], got {_describe(value)}"
                    )
            else:
                self.errors.append(where + self._unknown(table, name, value, keys, children))

    @staticmethod
    def _unknown(
        table: str, name: str, value: Any, keys: list[str], children: dict[str, str]
    ) -> str:
        shown = f"{table}.{_key_name(name)}" if table else _key_name(name)
        if isinstance(value, dict):
            hint = _suggest(name, list(children), lambda n: f"[{children[n]}]")
            return f"{shown}: unknown section [{shown}]{hint}"
        if not table:
            homes = [dotted for dotted in _KEYS if _leaf(dotted) == name]
            hint = f"; did you mean {homes[0]}?" if homes else ""
            return f"{shown}: setting outside any section{hint}"
        prefix = f"{table}."
        hint = _suggest(name, keys + list(children), lambda n: prefix + n)
        return f"{shown}: unknown key{hint}"

    def read_env(self, env: Mapping[str, str]) -> None:
        for variable in sorted(env):
            if not variable.startswith(ENV_PREFIX) or variable == CONFIG_PATH_VARIABLE:
                continue
            dotted = _ENV.get(variable)
            if dotted is None:
                hint = _suggest(variable, [*_ENV, CONFIG_PATH_VARIABLE])
                self.errors.append(f"{variable}: not a known setting variable{hint}")
                continue
            self.set(f"{variable}: ", dotted, env[variable], from_env=True)

    def check_across(self) -> None:
        for keys, message in _cross_field_problems(self.values, skip=self.invalid):
            # Name the first key (the likely culprit), but point at the source the user edited.
            where = next((self.sources[k] for k in keys if k in self.sources), "")
            self.errors.append(f"{where}{keys[0]}: {message}")


_OUTPUT_PINS = ("gpio.relay_pin", "gpio.green_led_pin", "gpio.red_led_pin", "gpio.buzzer_pin")
_INPUT_PINS = ("gpio.passage_entry_pin", "gpio.passage_exit_pin")


def _cross_field_problems(
    values: Mapping[str, Any], skip: set[str]
) -> list[tuple[tuple[str, ...], str]]:
    """Rules that involve several keys, as (keys involved, problem). Rules touching a key that is
    already invalid are skipped: its own error says enough."""
    problems: list[tuple[tuple[str, ...], str]] = []

    if not skip & {"gpio.pulse_ms", "gpio.max_pulse_ms"}:
        pulse, maximum = values["gpio.pulse_ms"], values["gpio.max_pulse_ms"]
        if pulse > maximum:
            problems.append((
                ("gpio.pulse_ms", "gpio.max_pulse_ms"),
                f"{pulse} ms is longer than gpio.max_pulse_ms ({maximum} ms)",
            ))  # fmt: skip

    used_by: dict[int, str] = {}
    for dotted in _OUTPUT_PINS + _INPUT_PINS:
        if dotted in skip:
            continue
        pin = values[dotted]
        if pin is None:  # an input that is not wired
            continue
        if pin in used_by:
            problems.append((
                (dotted, used_by[pin]),
                f"pin {pin} is also used by {used_by[pin]}; every input and output needs its "
                "own pin",
            ))  # fmt: skip
        else:
            used_by[pin] = dotted

    wired = [d for d in _INPUT_PINS if d not in skip and values[d] is not None]
    if "door.direction" not in skip and values["door.direction"] == "exit" and wired:
        problems.append((
            (wired[0], "door.direction"),
            'must be empty when door.direction is "exit": an exit-side scanner counts its grants '
            "as exits; wire the turnstile's contacts to the entry-side scanner",
        ))  # fmt: skip
    exit_signal = values["gpio.passage_exit_pin"] is not None or values["door.direction"] == "exit"
    limit_keys = {"door.max_visit_minutes", "gpio.passage_exit_pin", "door.direction"}
    if not skip & limit_keys and values["door.max_visit_minutes"] > 0 and exit_signal:
        problems.append((
            ("door.max_visit_minutes", "gpio.passage_exit_pin", "door.direction"),
            "must be 0 when the door has an exit signal (gpio.passage_exit_pin, or "
            'door.direction = "exit"): people are counted out as they leave',
        ))  # fmt: skip

    replay_keys = {"camera.backend", "camera.replay_path"}
    replay_without_path = (
        values["camera.backend"] == "replay" and not values["camera.replay_path"].strip()
    )
    if not skip & replay_keys and replay_without_path:
        problems.append((
            ("camera.replay_path", "camera.backend"),
            'is required when camera.backend is "replay" (a folder of images or a video file)',
        ))  # fmt: skip
    return problems


def _build(values: Mapping[str, Any]) -> Config:
    built: dict[str, Any] = {}
    for table in reversed(SCHEMA):
        fields = {k.name: values[f"{table.name}.{k.name}"] for k in table.keys}
        fields.update({_leaf(c): built[c] for c in _CHILDREN[table.name]})
        built[table.name] = _CLASSES[table.name](**fields)
    return Config(**{name: built[name] for name in _CHILDREN[""]})


def _defaults() -> dict[str, Any]:
    return {dotted: key.default for dotted, key in _KEYS.items()}


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and return the configuration (a ``Config``).

    ``path`` None means the embedded defaults only (no file). ``env`` supplies
    ``KIOSK_<SECTION>_<KEY>`` overrides, which win over the file; None means no overrides (the
    shell passes ``os.environ`` explicitly).
    ``KIOSK_CONFIG`` is the only ``KIOSK_*`` variable that is not a setting.

    Raises ``ConfigError`` listing every problem found: unreadable or missing file, TOML syntax
    (with line and column), unknown sections, keys or variables (with the closest known name),
    wrong types, out-of-range values, bad choices and cross-field conflicts.
    """
    loader = _Loader(_defaults())
    if path is not None:
        loader.read_file(Path(path))
    if env is not None:
        loader.read_env(env)
    loader.check_across()
    if loader.errors:
        raise ConfigError(loader.errors)
    return _build(loader.values)


def default_config() -> Config:
    """The configuration with every setting at its default (a ``Config``)."""
    return load_config(None)


def check_setting(dotted: str, value: Any) -> Any:
    """``value`` checked against the setting's own rules (type, range, choices, extra rule) and
    normalised (an int becomes a float for a number setting). Cross-field rules are not applied
    here: ``load_config`` does that. Raises KeyError for an unknown setting and ValueError with
    the problem in words (``"gpio.relay_pin: 40 is out of range 2..27 (BCM pin number)"``)."""
    key = _KEYS[dotted]
    checked, problem = _checked(key, value)
    if problem is not None:
        raise ValueError(f"{dotted}: {problem}")
    return checked


def parse_setting(dotted: str, text: str) -> Any:
    """A typed answer (a prompt, a command-line flag) parsed like an environment override
    (``true``/``false``, integers, numbers, text as is) and checked with ``check_setting``.
    Raises KeyError for an unknown setting and ValueError naming the setting and the problem."""
    key = _KEYS[dotted]
    value, problem = _parse_env(key, text)
    if problem is not None:
        raise ValueError(f"{dotted}: {problem}")
    return check_setting(dotted, value)


def config_path_from(env: Mapping[str, str]) -> Path:
    """The config file to read: ``KIOSK_CONFIG`` when set and non-empty, else the default path."""
    value = env.get(CONFIG_PATH_VARIABLE, "")
    return Path(value) if value else DEFAULT_CONFIG_PATH


def as_dict(config: Config) -> dict[str, Any]:
    """The configuration as plain nested dicts of str/int/float/bool (JSON- and TOML-ready): an
    optional setting that is not set is ``""``, as the file spells it."""

    def plain(node: dict[str, Any]) -> dict[str, Any]:
        return {
            k: plain(v) if isinstance(v, dict) else ("" if v is None else v)
            for k, v in node.items()
        }

    return plain(dataclasses.asdict(config))


def policy_settings(config: Config) -> PolicySettings:
    """The access policy's settings, with the gym's time zone from ``site.timezone``."""
    return PolicySettings(
        timezone=config.site.timezone,
        passback_minutes=config.policy.passback_minutes,
        stale_after_hours=config.policy.stale_after_hours,
        when_stale=StalePolicy(config.policy.when_stale),
        # An exit-side scanner lets people out: a full gym is no reason to keep them in.
        capacity=config.door.capacity if config.door.direction == "entry" else 0,
    )


def occupancy_rules(config: Config) -> OccupancyRules:
    """How this door counts who is inside (``kiosk.core.occupancy``): entries confirmed by the
    turnstile when its entry contact is wired at an entry door, else grants; the visit length
    rule; the capacity (none at an exit-side scanner)."""
    entry = config.door.direction == "entry"
    return OccupancyRules(
        timezone=config.site.timezone,
        confirmed=entry and config.gpio.passage_entry_pin is not None,
        max_visit_minutes=float(config.door.max_visit_minutes),
        capacity=config.door.capacity if entry else 0,
    )


# ---------------------------------------------------------------------------------------------
# The documented example file


def _toml_value(value: Any) -> str:
    if value is None:  # an optional setting not set
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _constraint(key: Key) -> str:
    if key.choices:
        return "One of: " + ", ".join(key.choices)
    if key.type is bool:
        return "true or false"
    kind = {str: "Text", int: "Integer", float: "Number"}[key.type]
    if key.low is not None and key.high is not None:
        empty = ', or "" (not set)' if key.optional else ""
        return f"{kind} {_bound(key.low)}..{_bound(key.high)}{_unit(key)}{empty}"
    return f"{kind}, {key.rule}" if key.rule else kind


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, width=98, initial_indent="# ", subsequent_indent="# ")


def render_example() -> str:
    """The documented example config: every key at its default, each with its meaning, unit,
    range or choices, default and environment variable in a comment above it."""
    lines = [
        f"# FitFlow Kiosk configuration, read from {DEFAULT_CONFIG_PATH}",
        f"# (or the file named by ${CONFIG_PATH_VARIABLE}).",
        "#",
        "# Every setting is optional: anything left out keeps the default shown here. Unknown",
        "# sections or keys are errors; check a file with `kiosk config check`. Any setting can",
        "# be overridden by an environment variable KIOSK_<SECTION>_<KEY> (shown with each key),",
        "# which wins over this file. No secrets belong here: they live in the systemd credentials",
        "# directory. This file is generated by kiosk.config.render_example().",
    ]
    for table in SCHEMA:
        bar = "# " + "-" * 96
        lines += ["", bar, *_comment(f"[{table.name}] {table.doc}"), bar]
        if not table.keys:
            continue
        lines.append(f"[{table.name}]")
        for key in table.keys:
            dotted = f"{table.name}.{key.name}"
            details = f"{_constraint(key)}. Default: {_toml_value(key.default)}."
            lines += ["", *_comment(key.doc), *_comment(details)]
            lines.append(f"# Environment: {_env_name(dotted)}")
            lines.append(f"{key.name} = {_toml_value(key.default)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Self-check of the schema at import: a mistake here is a programming error, caught by any test.


def _check_schema() -> None:
    pattern_fields = [f.name for f in dataclasses.fields(Pattern)]
    if [k.name for k in _PATTERN_KEYS] != pattern_fields:
        raise RuntimeError(
            f"kiosk.config: pattern keys do not match Pattern fields {pattern_fields}"
        )
    for table in SCHEMA:
        if "_" in table.name:
            raise RuntimeError(f"kiosk.config: table [{table.name}] has '_': env names would clash")
        if _parent(table.name) and _parent(table.name) not in _TABLES:
            raise RuntimeError(f"kiosk.config: [{table.name}] comes without its parent table")
    if len(_ENV) != len(_KEYS) or CONFIG_PATH_VARIABLE in _ENV:
        raise RuntimeError("kiosk.config: two settings map to the same environment variable")
    for dotted, key in _KEYS.items():
        if _checked(key, key.default)[1] is not None:
            raise RuntimeError(f"kiosk.config: the default of {dotted} breaks its own rule")
        if key.optional and key.type not in (int, float):
            raise RuntimeError(f"kiosk.config: {dotted} is optional but not a number")


_check_schema()
