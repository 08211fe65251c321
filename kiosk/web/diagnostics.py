"""The diagnostics bundle the owner downloads for support: one zip of five files.

- ``status.json``: ``kiosk status`` (``kiosk.ops.status.collect_status``) with the member ids taken
  out of its recent check-ins, plus the graded health and the sync view;
- ``logs.txt``: the last 2,000 journal lines of the kiosk's services (or why there are none);
- ``config.toml``: the effective configuration, anything secret-looking redacted;
- ``integrity.txt``: SQLite's quick check of the door's database (read-only);
- ``audit.json``: the owner page's audit log.

No member names or ids go in: the views it reuses never hold them, and ``status.json`` is
stripped explicitly.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from kiosk.ops.logs import journalctl_command

LOG_LINES = 2000
LOG_TIMEOUT_S = 10.0
REDACTED = "[redacted]"

# Names of settings whose values are secrets (a path to a secret's file is not one).
_SECRET_KEY = re.compile(r"(?i)(pass(word|phrase)?|secret|token|api_?key|private|credential|auth)")
_PATH_KEY = re.compile(r"(?i)(_file|_path|_dir)$")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_SECRET_PARAM = re.compile(r"(?i)([?&](?:token|key|secret|password|pass|auth|sig)[^=&]*=)[^&\s#]+")

RunLogs = Callable[[Sequence[str], float], tuple[int, str]]


def redact_text(text: str) -> str:
    """``text`` with the credentials in any URL in it removed (``user:password@``, and query
    parameters named like secrets)."""
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    return _SECRET_PARAM.sub(rf"\1{REDACTED}", text)


def redact(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a nested settings tree with secret-looking values replaced by ``[redacted]``:
    values of keys named like secrets (password, token, secret, key, credential...; but not
    ``*_file``/``*_path`` names, which hold where a secret lives), and credentials inside URLs."""
    clean: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            clean[key] = redact(value)
        elif _SECRET_KEY.search(str(key)) and not _PATH_KEY.search(str(key)):
            clean[key] = REDACTED
        elif isinstance(value, str):
            clean[key] = redact_text(value)
        else:
            clean[key] = value
    return clean


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # JSON escapes are TOML basic strings


def config_toml(tree: Mapping[str, Any]) -> str:
    """A nested settings tree (``kiosk.config.as_dict``) as TOML: one table per section, nested
    sections as dotted tables."""
    lines: list[str] = []

    def table(prefix: str, node: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in node.items() if not isinstance(v, Mapping)]
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        for key, value in scalars:
            lines.append(f"{key} = {_toml_value(value)}")
        if scalars:
            lines.append("")
        for key, value in node.items():
            if isinstance(value, Mapping):
                table(f"{prefix}.{key}" if prefix else key, value)

    table("", tree)
    return "\n".join(lines).rstrip("\n") + "\n"


def _run(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
    # A fixed argv built by kiosk.ops.logs, no shell.
    done = subprocess.run(  # noqa: S603
        list(argv), capture_output=True, text=True, errors="replace", timeout=timeout_s, check=False
    )
    return done.returncode, done.stdout if done.returncode == 0 else done.stderr


def collect_logs(
    run: RunLogs | None = None,
    which: Callable[[str], str | None] = shutil.which,
    *,
    lines: int = LOG_LINES,
    timeout_s: float = LOG_TIMEOUT_S,
) -> str:
    """The last ``lines`` journal lines of the kiosk's services, or a sentence saying why not
    (journalctl missing, too slow, refused). Never raises."""
    argv = journalctl_command("all", lines=lines)
    header = f"$ {' '.join(argv)}\n"
    if which("journalctl") is None:
        return header + (
            "journalctl not found: this machine does not run systemd's journal, so the kiosk's "
            "services are not installed here (a kiosk started by hand logs to its terminal).\n"
        )
    try:
        code, text = (run or _run)(argv, timeout_s)
    except subprocess.TimeoutExpired:
        return header + f"journalctl did not answer within {timeout_s:g} s; no logs included.\n"
    except OSError as exc:
        return header + f"journalctl could not be started: {exc.strerror or exc}\n"
    if code != 0:
        return header + (
            f"journalctl failed (exit status {code}); the page's user may not read the system "
            f"journal (the installed service is in the systemd-journal group).\n{text}"
        )
    return header + text


def without_member_ids(status: Mapping[str, Any]) -> dict[str, Any]:
    """``kiosk status``'s dict with the member ids of its recent check-ins removed."""
    clean = dict(status)
    if isinstance(clean.get("recent_checkins"), list):
        clean["recent_checkins"] = [
            {k: v for k, v in row.items() if k != "member_id"}
            for row in clean["recent_checkins"]
            if isinstance(row, Mapping)
        ]
    return clean


def build_bundle(
    *,
    status: Mapping[str, Any],
    logs: str,
    config: Mapping[str, Any],
    integrity: str,
    audit: list[dict[str, Any]],
    now: datetime,
) -> bytes:
    """The zip's bytes. ``config`` is the effective settings tree; it, the status and the logs
    are redacted here."""
    # Zip times cannot be before 1980 (a Pi whose clock was never set says 1970).
    stamp = max(now.timetuple()[:6], (1980, 1, 1, 0, 0, 0))
    # Credentials inside any URL an error or a log line quotes are removed too.
    files = {
        "status.json": redact_text(json.dumps(status, indent=2, default=str)) + "\n",
        "logs.txt": redact_text(logs),
        "config.toml": "# The effective configuration (file and environment), secrets redacted.\n"
        + config_toml(redact(config)),
        "integrity.txt": integrity,
        "audit.json": json.dumps(audit, indent=2, default=str) + "\n",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, text in files.items():
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            bundle.writestr(info, text.encode("utf-8"))
    return buffer.getvalue()
