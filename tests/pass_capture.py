"""A member's phone in a real browser, for tests: Debian's Chromium (through Playwright) holding a
phone pass from the pass page (``/pass/``) of a running reference cloud, and captures of the QR
code it shows at chosen moments.

    phone = PassPhone.open(browser, cloud_url, at=moment, activation_code=code)
    shot = phone.capture(moment + 20)   # Capture(png=..., payload="FFP1:...", step=...)
    png, payload = capture(phone, moment + 40)

The page's clock is Playwright's fake clock, paused: the page shows exactly the code of the
moment asked for, and no test waits for real time to pass. Moments only move forward (the fake
clock cannot go back). ``capture`` decodes its own screenshot (zxing-cpp) and returns the text
read off the screen, so a capture is what a door camera would see: the lead feeds them through
the door loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import cv2
import numpy as np
import zxingcpp

PHONE = {"width": 390, "height": 844}
WAIT_MS = 20_000  # a deadline for events that come much sooner, never a delay relied on


def moment_dt(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


def decode_png(png: bytes) -> list[str]:
    """The texts of every QR code zxing-cpp finds in a PNG image."""
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError("not a PNG image")
    return [found.text for found in zxingcpp.read_barcodes(image) if found.valid]


@dataclass(frozen=True, slots=True)
class Capture:
    """One screenshot of the pass's QR code (PNG bytes), the text decoded from it, and the time
    step the page says it drew."""

    png: bytes
    payload: str
    step: int


class PassPhone:
    """One phone: a fresh browser context (its own IndexedDB, service worker and cache) with one
    page on ``/pass/``, whose clock is paused at a chosen moment."""

    def __init__(self, context, page, base_url: str, moment: float) -> None:
        self.context = context
        self.page = page
        self.base_url = base_url.rstrip("/")
        self.moment = moment
        # Script errors and anything the Content-Security-Policy refused: none are expected.
        self.script_problems: list[str] = []
        page.on("pageerror", lambda error: self.script_problems.append(str(error)))
        page.on("console", self._console)

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.script_problems.append(message.text)

    @classmethod
    def open(
        cls,
        browser,
        base_url: str,
        at: float,
        activation_code: str | None = None,
        *,
        iphone_safari: bool = False,
    ) -> PassPhone:
        """A new phone whose clock reads ``at`` (unix seconds), opening ``/pass/`` (with
        ``#activate=<code>`` when given). ``iphone_safari``: the page sees what Safari on an
        iPhone shows it outside the Home Screen (``navigator.standalone === false``). Returns
        once the page has loaded; what it shows then is for the caller to wait for."""
        context = browser.new_context(viewport=PHONE, device_scale_factor=1)
        context.set_default_timeout(WAIT_MS)
        if iphone_safari:
            context.add_init_script(
                "Object.defineProperty(Navigator.prototype, 'standalone', {get: () => false})"
            )
        page = context.new_page()
        phone = cls(context, page, base_url, at)
        # Installed a second early: the clock runs from there until paused at the moment itself.
        page.clock.install(time=moment_dt(at - 1))
        page.clock.pause_at(moment_dt(at))
        fragment = "" if activation_code is None else f"#activate={activation_code}"
        page.goto(f"{phone.base_url}/pass/{fragment}")
        return phone

    @property
    def url(self) -> str:
        return f"{self.base_url}/pass/"

    def qr(self):
        return self.page.get_by_test_id("qr")

    def move_to(self, unix_s: float) -> None:
        """Jump the page's clock forward to ``unix_s`` (firing the page's timers once, as a
        phone waking up would) and keep it paused there. ValueError for a moment in the past."""
        if unix_s < self.moment:
            raise ValueError("a phone's clock only moves forward in these tests")
        self.page.clock.pause_at(moment_dt(unix_s))
        self.moment = unix_s

    def wait_for_step(self, step: int) -> None:
        """Wait until the page has drawn the code of ``step``."""
        self.page.locator(f'[data-testid="qr"][data-step="{step}"] svg').wait_for()

    def capture(self, unix_s: float) -> Capture:
        """Move the clock to ``unix_s``, wait for that moment's code (the step of the pass's own
        period), screenshot it and read it back. AssertionError if the screenshot does not hold
        exactly one readable QR code."""
        if unix_s != self.moment:
            self.move_to(unix_s)
        self.page.locator('[data-testid="qr"] svg').wait_for()
        period_s = int(self.qr().get_attribute("data-period"))
        step = int(unix_s // period_s)
        self.wait_for_step(step)
        png = self.qr().screenshot()
        texts = decode_png(png)
        assert len(texts) == 1, f"expected one QR code in the screenshot, read {texts}"
        return Capture(png, texts[0], step)

    def stored_key_facts(self) -> dict:
        """What IndexedDB holds for the pass's private key: its algorithm, usages, whether it
        is extractable, and the error name an export attempt gets (None if it succeeded)."""
        return self.page.evaluate(
            """async () => {
                const db = await new Promise((resolve, reject) => {
                    const open = indexedDB.open("fitflow-pass");
                    open.onsuccess = () => resolve(open.result);
                    open.onerror = () => reject(open.error);
                });
                const record = await new Promise((resolve, reject) => {
                    const get = db.transaction("pass").objectStore("pass").get("current");
                    get.onsuccess = () => resolve(get.result);
                    get.onerror = () => reject(get.error);
                });
                db.close();
                const key = record.keyPair.privateKey;
                let exportError = null;
                try {
                    await crypto.subtle.exportKey("pkcs8", key);
                } catch (error) {
                    exportError = error.name;
                }
                return {
                    isCryptoKey: key instanceof CryptoKey,
                    algorithm: key.algorithm.name,
                    type: key.type,
                    usages: key.usages,
                    extractable: key.extractable,
                    exportError,
                    passId: record.pass_id,
                };
            }"""
        )

    def close(self) -> None:
        self.context.close()


def capture(phone: PassPhone, unix_s: float) -> tuple[bytes, str]:
    """(PNG screenshot of the QR code, the text read from it) of ``phone`` at ``unix_s``."""
    shot = phone.capture(unix_s)
    return shot.png, shot.payload
