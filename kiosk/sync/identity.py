"""The device's credentials: who this kiosk is to the cloud, and its secret token.

Written once by ``kiosk enrol`` as a small JSON file (``sync.credentials_file``, by default
``/var/lib/fitflow-kiosk/device.json``), atomically and with mode 0600, and read by ``kiosk sync``,
the one process that talks to the cloud. Under systemd the unit may hand it over with
``LoadCredential=device.json:/var/lib/fitflow-kiosk/device.json``: then the copy in
``$CREDENTIALS_DIRECTORY`` (same file name) is read instead, and the data file itself can stay
unreadable to the service.

The token is the device's password: it is never logged, never part of a ``repr`` or an error
message, and a file that other users could read is refused rather than used.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kiosk.data.files import write_private_file
from sync.protocol import Enrolment, ProtocolError, parse_utc, utc_text

CREDENTIALS_DIRECTORY_VARIABLE = "CREDENTIALS_DIRECTORY"
_FIELDS = (
    "cloud_url",
    "device_id",
    "token",
    "organization_id",
    "gym_id",
    "gym_name",
    "timezone",
    "enrolled_at",
)


class IdentityError(Exception):
    """The credentials file is missing, unsafe or unreadable; the message says which file and
    what to do, and never contains the token."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """This device as the cloud enrolled it. ``token`` is secret (left out of ``repr``);
    ``enrolled_at`` is the cloud's time of the enrolment."""

    cloud_url: str
    device_id: str
    token: str = field(repr=False)
    organization_id: str
    gym_id: str
    gym_name: str
    timezone: str
    enrolled_at: datetime

    @classmethod
    def from_enrolment(cls, cloud_url: str, enrolment: Enrolment) -> DeviceIdentity:
        return cls(
            cloud_url=cloud_url,
            device_id=enrolment.device_id,
            token=enrolment.token,
            organization_id=enrolment.organization_id,
            gym_id=enrolment.gym_id,
            gym_name=enrolment.gym_name,
            timezone=enrolment.timezone,
            enrolled_at=enrolment.server_time,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "cloud_url": self.cloud_url,
            "device_id": self.device_id,
            "token": self.token,
            "organization_id": self.organization_id,
            "gym_id": self.gym_id,
            "gym_name": self.gym_name,
            "timezone": self.timezone,
            "enrolled_at": utc_text(self.enrolled_at),
        }


def credentials_path(path: Path, env: Mapping[str, str] | None = None) -> Path:
    """The file to read: ``$CREDENTIALS_DIRECTORY/<path's name>`` when systemd provides one with
    that name, else ``path``. ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    directory = env.get(CREDENTIALS_DIRECTORY_VARIABLE, "")
    if directory:
        candidate = Path(directory) / Path(path).name
        if candidate.is_file():
            return candidate
    return Path(path)


def load_identity(path: Path, env: Mapping[str, str] | None = None) -> DeviceIdentity:
    """Read the credentials (see ``credentials_path`` for which file).

    Raises IdentityError when the file does not exist (not enrolled yet), is readable or writable
    by group or others (with the ``chmod`` that fixes it), is not a regular file, cannot be read,
    or is not a complete credentials file.
    """
    source = credentials_path(Path(path), env)
    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise IdentityError(
            f"{source} does not exist: this device is not enrolled yet. Run "
            f"`kiosk enrol --cloud URL --code CODE` with a code from the gym's admin page."
        ) from None
    except OSError as exc:
        raise IdentityError(f"cannot open the credentials file {source}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IdentityError(f"{source} is not a regular file; expected the device credentials")
        if info.st_mode & 0o077:
            raise IdentityError(
                f"{source} is readable or writable by other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}), so its token may have leaked and it is not "
                f"used. Fix it with `chmod 600 {source}` (and consider re-enrolling the device)."
            )
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            data = handle.read(64 * 1024)
    except OSError as exc:
        raise IdentityError(f"cannot read the credentials file {source}: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    return _parse(data, source)


def _parse(data: bytes, source: Path) -> DeviceIdentity:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise IdentityError(
            f"{source} is not a device credentials file (not a JSON object); enrol again with "
            f"`kiosk enrol --force`."
        )
    missing = [name for name in _FIELDS if not isinstance(obj.get(name), str) or not obj[name]]
    if missing:
        raise IdentityError(
            f"{source} is incomplete: {', '.join(missing)} missing or empty; enrol again with "
            f"`kiosk enrol --force`."
        )
    try:
        enrolled_at = parse_utc(obj["enrolled_at"], "enrolled_at")
    except ProtocolError as exc:
        raise IdentityError(f"{source}: {exc}") from None
    return DeviceIdentity(
        cloud_url=obj["cloud_url"],
        device_id=obj["device_id"],
        token=obj["token"],
        organization_id=obj["organization_id"],
        gym_id=obj["gym_id"],
        gym_name=obj["gym_name"],
        timezone=obj["timezone"],
        enrolled_at=enrolled_at,
    )


def identity_text(identity: DeviceIdentity) -> str:
    """The credentials file's content (JSON); contains the token."""
    return json.dumps(identity.to_json(), indent=2, sort_keys=True) + "\n"


def save_identity(path: Path, identity: DeviceIdentity, *, overwrite: bool = False) -> None:
    """Write the credentials atomically with mode 0600: a temporary file in the same folder,
    flushed to disk, then renamed over ``path`` (a crash leaves the old file or the new one,
    never half of one). Creates the folder (mode 0750) if needed.

    Raises IdentityError when ``path`` exists and ``overwrite`` is False (the device is already
    enrolled), or when the file cannot be written (then nothing changed).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise IdentityError(
            f"{path} already holds this device's credentials; enrolling again replaces its "
            f"identity in the cloud. Use --force to do that."
        )
    try:
        write_private_file(path, identity_text(identity).encode("utf-8"))
    except OSError as exc:
        raise IdentityError(
            f"cannot write the credentials file {path}: {exc.strerror or exc}. Check that its "
            f"folder exists and belongs to the kiosk's user (or run enrol as that user)."
        ) from None
