// FitFlow pass page: the member's phone pass (docs/passes.md, "The pass page").
//
// Activation (/pass/#activate=CODE, the code in the fragment so no server log or Referer sees
// it): make an Ed25519 key pair whose private key can never be exported, send the public key
// with the code, keep the key pair and the pass's details in IndexedDB, drop the fragment.
// Then, and on every later visit, even offline: every period_s seconds sign the time step and
// show the code FFP1:<base32 of pass id, step, signature> as a QR code, with a countdown. When
// online, ask the cloud now and then whether the pass still stands and whether the phone's
// clock agrees with it, and say so plainly when not.
//
// No framework, no innerHTML: text goes in with textContent, the QR code is built as SVG
// elements, so the page runs under a CSP without inline scripts or styles.

import { encodeText } from "./qr.js";

const DB_NAME = "fitflow-pass";
const DB_STORE = "pass";
const DB_KEY = "current";
const SCHEME = "FFP1";
const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const ACTIVATION_CODE = /^[A-Z2-7]{16}$/;
const PASS_ID = /^[A-Z2-7]{8}$/;
const MIN_PERIOD_S = 5;
const MAX_PERIOD_S = 300;
const STATUS_EVERY_MS = 5 * 60 * 1000; // ask the cloud about the pass this often while open
const STATUS_AGAIN_AFTER_MS = 60 * 1000; // on coming back to the page, if the last ask is older
const QUIET_ZONE = 4; // light modules around the symbol, as the standard requires
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

// --- Bytes and text ---

function utf8(text) {
  return new TextEncoder().encode(text);
}

function concat(...parts) {
  const length = parts.reduce((sum, part) => sum + part.length, 0);
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

// RFC 4648 base32, upper case, no padding (a trailing partial group is zero-filled).
function base32(bytes) {
  let out = "";
  let buffer = 0;
  let bits = 0;
  for (const byte of bytes) {
    buffer = ((buffer << 8) | byte) & 0xfff; // at most 4 + 8 bits are ever pending
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += BASE32[(buffer >>> bits) & 31];
    }
  }
  if (bits > 0) {
    out += BASE32[(buffer << (5 - bits)) & 31];
  }
  return out;
}

// The 5 bytes of an 8-character pass id (40 bits: no partial group).
function base32Decode(text) {
  const out = [];
  let buffer = 0;
  let bits = 0;
  for (const char of text) {
    buffer = ((buffer << 5) | BASE32.indexOf(char)) & 0xfff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((buffer >>> bits) & 255);
    }
  }
  return new Uint8Array(out);
}

function base64url(bytes) {
  let binary = "";
  for (const byte of bytes) {
    binary += String.fromCharCode(byte);
  }
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// The cloud's time text (2026-05-01T17:03:09.120000Z) to milliseconds, or NaN. Parsed by hand:
// not every browser's Date.parse accepts six decimals.
function parseServerTime(text) {
  const match = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?Z$/.exec(String(text));
  if (match === null) {
    return NaN;
  }
  const [, y, mo, d, h, mi, s, fraction] = match;
  const ms = fraction === undefined ? 0 : Number(fraction.padEnd(6, "0").slice(0, 3));
  return Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), ms);
}

// --- Storage: one record, the pass, in IndexedDB (CryptoKey objects are stored as they are) ---

function openDatabase() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(DB_STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
    request.onblocked = () => reject(new Error("the pass storage is blocked by another tab"));
  });
}

async function withStore(mode, action) {
  const db = await openDatabase();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(DB_STORE, mode);
      const request = action(tx.objectStore(DB_STORE));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

function isPeriod(value) {
  return Number.isInteger(value) && value >= MIN_PERIOD_S && value <= MAX_PERIOD_S;
}

// A stored record that can make codes, or null (nothing stored, or something unusable).
function usable(record) {
  const ok =
    record !== null &&
    typeof record === "object" &&
    record.keyPair &&
    record.keyPair.privateKey instanceof CryptoKey &&
    typeof record.pass_id === "string" &&
    PASS_ID.test(record.pass_id) &&
    typeof record.organization_id === "string" &&
    record.organization_id.length > 0 &&
    isPeriod(record.period_s);
  return ok ? record : null;
}

async function loadPass() {
  return usable((await withStore("readonly", (store) => store.get(DB_KEY))) ?? null);
}

function savePass(record) {
  return withStore("readwrite", (store) => store.put(record, DB_KEY));
}

// --- Activation ---

class ActivationProblem extends Error {
  constructor(title, detail, retry) {
    super(title);
    this.title = title;
    this.detail = detail;
    this.retry = retry;
  }
}

// The code of an activation link (/pass/#activate=CODE), upper-cased; null without one.
function activationCodeInUrl() {
  const match = /^#activate=(.*)$/.exec(location.hash);
  if (match === null) {
    return null;
  }
  try {
    return decodeURIComponent(match[1]).toUpperCase();
  } catch {
    return ""; // malformed escapes: not a code
  }
}

function dropFragment() {
  history.replaceState(null, "", location.pathname + location.search);
}

async function postJson(path, body) {
  return fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
    referrerPolicy: "no-referrer",
  });
}

async function readJson(answer) {
  try {
    return await answer.json();
  } catch {
    return {};
  }
}

const TEXT_FIELDS = ["pass_id", "organization_id", "organization_name", "first_name"];

async function activate(code) {
  // Private key not extractable: no script, this one included, can ever read it out.
  const keyPair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", keyPair.publicKey));
  // Make sure this browser can keep the key before spending the code on it (a private window
  // may refuse IndexedDB, or the storage may be full).
  try {
    await withStore("readwrite", (store) => {
      store.put({ keyPair }, "probe");
      return store.delete("probe");
    });
  } catch {
    throw new ActivationProblem(
      "This browser cannot keep a pass",
      "It refuses to store it (a private window, or storage full). Open the link in a normal window, or in another browser.",
      false,
    );
  }
  let answer;
  try {
    answer = await postJson("v1/activate", { code, public_key: base64url(publicKey) });
  } catch {
    throw new ActivationProblem(
      "No connection",
      "Activating a pass needs the internet once. Connect this phone and try again.",
      true,
    );
  }
  const body = await readJson(answer);
  if (answer.status === 410) {
    throw new ActivationProblem(
      "This activation link has already been used or has expired",
      "Ask at the front desk for a new activation link.",
      false,
    );
  }
  if (answer.status === 409) {
    throw new ActivationProblem(
      "You already have the most phone passes allowed",
      "Ask at the front desk to cancel the pass on your old phone, then for a new activation link.",
      false,
    );
  }
  if (answer.status >= 500 || answer.status === 429) {
    throw new ActivationProblem("The gym's server is busy", "Please try again in a minute.", true);
  }
  const wellFormed =
    answer.status === 201 &&
    TEXT_FIELDS.every((field) => typeof body[field] === "string") &&
    PASS_ID.test(body.pass_id) &&
    isPeriod(body.period_s);
  if (!wellFormed) {
    throw new ActivationProblem(
      "This activation link does not work",
      "Check that you opened the whole link, or ask at the front desk for a new one.",
      false,
    );
  }
  const record = {
    keyPair,
    pass_id: body.pass_id,
    organization_id: body.organization_id,
    organization_name: body.organization_name,
    first_name: body.first_name,
    period_s: body.period_s,
    status: "ACTIVE",
    activated_at: Date.now(),
  };
  await savePass(record);
  // Ask the browser not to evict the pass under storage pressure (Chrome, Firefox; Safari
  // still applies its 7-day rule to a page that is not on the Home Screen).
  if (navigator.storage && navigator.storage.persist) {
    navigator.storage.persist().catch(() => {});
  }
  return record;
}

// --- Codes ---

function stepBytes(step) {
  return new Uint8Array([(step >>> 24) & 255, (step >>> 16) & 255, (step >>> 8) & 255, step & 255]);
}

// The code for one time step: FFP1: + base32(pass id (5) + step (4, big-endian) + signature (64))
// where the signature covers "FFP1" 0x00 organisation id 0x00 pass id step (docs/passes.md).
async function passCode(record, step) {
  const id = base32Decode(record.pass_id);
  const when = stepBytes(step);
  const zero = new Uint8Array([0]);
  const message = concat(utf8(SCHEME), zero, utf8(record.organization_id), zero, id, when);
  const signature = new Uint8Array(
    await crypto.subtle.sign({ name: "Ed25519" }, record.keyPair.privateKey, message),
  );
  return `${SCHEME}:${base32(concat(id, when, signature))}`;
}

function periodMs(record) {
  return record.period_s * 1000;
}

function stepAt(record, ms) {
  return Math.floor(ms / periodMs(record));
}

// The QR code as one SVG path on a white square, quiet zone included, scaled by CSS to the width
// of the screen; crispEdges keeps module edges sharp at any scale.
function drawCode(text, step, period) {
  const symbol = encodeText(text, { level: "M" });
  const side = symbol.size + 2 * QUIET_ZONE;
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${side} ${side}`);
  svg.setAttribute("shape-rendering", "crispEdges");
  svg.setAttribute("aria-hidden", "true");
  const background = document.createElementNS(SVG_NS, "rect");
  background.setAttribute("width", String(side));
  background.setAttribute("height", String(side));
  background.setAttribute("fill", "#fff");
  let d = "";
  symbol.rows.forEach((row, y) => {
    for (let x = 0; x < row.length; ) {
      if (!row[x]) {
        x += 1;
        continue;
      }
      let run = 1;
      while (x + run < row.length && row[x + run]) {
        run += 1;
      }
      d += `M${x + QUIET_ZONE} ${y + QUIET_ZONE}h${run}v1h-${run}z`;
      x += run;
    }
  });
  const modules = document.createElementNS(SVG_NS, "path");
  modules.setAttribute("d", d);
  modules.setAttribute("fill", "#000");
  svg.append(background, modules);
  const holder = $("qr");
  holder.replaceChildren(svg);
  holder.dataset.step = String(step);
  holder.dataset.period = String(period);
  holder.dataset.version = String(symbol.version);
  holder.dataset.modules = String(side);
  fitCode();
}

// Sizes the code to the widest whole number of device pixels per module that fits the screen,
// so every module is the same size and its edges fall on pixel boundaries.
function fitCode() {
  const holder = $("qr");
  const svg = holder.querySelector("svg");
  const side = Number(holder.dataset.modules);
  if (svg === null || !side || holder.clientWidth === 0) {
    return;
  }
  const ratio = window.devicePixelRatio || 1;
  const perModule = Math.max(1, Math.floor((holder.clientWidth * ratio) / side));
  const size = String((perModule * side) / ratio);
  svg.setAttribute("width", size);
  svg.setAttribute("height", size);
}

// --- What the page shows ---

const state = {
  record: null,
  shownStep: null,
  shownCode: null,
  timer: 0,
  lastStatusAt: 0,
  started: false,
};

function setHidden(id, hidden) {
  $(id).hidden = hidden;
}

function showProblem(problem, onRetry) {
  $("problem-title").textContent = problem.title;
  $("problem-detail").textContent = problem.detail;
  const retry = $("retry");
  retry.hidden = !problem.retry;
  retry.onclick = onRetry;
  setHidden("problem", false);
}

function showWho(record) {
  $("gym").textContent = record.organization_name || "";
  $("member").textContent = record.first_name || "";
  setHidden("who", false);
}

function showRevoked(revoked) {
  setHidden("revoked", !revoked);
  setHidden("pass", revoked);
}

function showClock(offsetMs, record) {
  const wrong = Math.abs(offsetMs) > periodMs(record);
  if (wrong) {
    const seconds = Math.round(Math.abs(offsetMs) / 1000);
    const minutes = Math.round(seconds / 60);
    const amount = seconds < 120 ? `${seconds} seconds` : `${minutes} minutes`;
    // offset = cloud minus phone: a positive one means the phone is behind.
    $("clock-detail").textContent = `It is ${amount} ${offsetMs > 0 ? "slow" : "fast"}.`;
  }
  setHidden("clock", !wrong);
}

function isStandalone() {
  return (
    (window.matchMedia && window.matchMedia("(display-mode: standalone)").matches) ||
    navigator.standalone === true
  );
}

async function tick() {
  const record = state.record;
  if (record.status === "REVOKED") {
    return; // no more codes
  }
  const step = stepAt(record, Date.now());
  if (step !== state.shownStep) {
    try {
      const code = await passCode(record, step);
      // Drawn only if still current: the clock may have moved on (or been set back) while
      // signing, or another pass been activated; the next tick draws the right one.
      if (state.record === record && stepAt(record, Date.now()) === step) {
        drawCode(code, step, record.period_s);
        state.shownStep = step;
        state.shownCode = code;
      }
    } catch {
      showProblem({
        title: "This phone cannot make the code",
        detail: "Its pass key is unusable. Ask at the front desk for a new activation link.",
        retry: false,
      });
      setHidden("pass", true);
      return;
    }
  }
  const now = Date.now();
  const left = Math.max(1, Math.ceil(((stepAt(record, now) + 1) * periodMs(record) - now) / 1000));
  $("countdown").textContent = `New code in ${left} s`;
  clearTimeout(state.timer);
  state.timer = setTimeout(tick, 1000 - (now % 1000));
}

// Asks the cloud whether the pass stands, proving possession with the current code. Offline or
// unanswered: nothing changes (the code keeps working at the door).
async function checkStatus() {
  const record = state.record;
  if (record === null || state.shownCode === null || record.status === "REVOKED") {
    return;
  }
  if (!navigator.onLine) {
    setHidden("offline", false);
    markStatus("offline");
    return;
  }
  state.lastStatusAt = Date.now();
  const sentAt = Date.now();
  let answer;
  try {
    answer = await postJson("v1/status", { code: state.shownCode });
  } catch {
    setHidden("offline", false);
    markStatus("offline");
    return;
  }
  setHidden("offline", true);
  const body = await readJson(answer);
  const serverMs = parseServerTime(body.server_time);
  if (!Number.isNaN(serverMs)) {
    showClock(serverMs - (sentAt + Date.now()) / 2, record);
  }
  const gone = answer.status === 404 || (answer.status === 200 && body.status === "REVOKED");
  const wrongKey = answer.status === 403 && body.error === "bad_signature";
  if (gone || wrongKey) {
    // Kept, so the page says so offline too; a cancelled pass never comes back.
    record.status = "REVOKED";
    await savePass(record).catch(() => {});
    showRevoked(true);
  }
  markStatus(gone || wrongKey ? "revoked" : `answered-${answer.status}`);
}

// The outcome of the last status check, on the page's root element (tests wait for it).
function markStatus(outcome) {
  document.documentElement.dataset.statusChecks = String(
    Number(document.documentElement.dataset.statusChecks || 0) + 1,
  );
  document.documentElement.dataset.status = outcome;
}

function startPass(record) {
  state.record = record;
  setHidden("missing", true);
  showWho(record);
  setHidden("install", isStandalone());
  if (record.status === "REVOKED") {
    showRevoked(true);
    return;
  }
  showRevoked(false);
  state.shownStep = null;
  tick().then(checkStatus);
  if (state.started) {
    return;
  }
  state.started = true;
  window.addEventListener("resize", fitCode);
  setInterval(checkStatus, STATUS_EVERY_MS);
  window.addEventListener("online", checkStatus);
  window.addEventListener("offline", () => setHidden("offline", false));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible" || state.record.status === "REVOKED") {
      return;
    }
    tick();
    if (Date.now() - state.lastStatusAt > STATUS_AGAIN_AFTER_MS) {
      checkStatus();
    }
  });
}

function showMissing() {
  setHidden("missing", false);
  setHidden("install", isStandalone());
}

// Activates with a code (from the link or typed) and shows the new pass, or says what went
// wrong; a pass already on the phone (previous) keeps working meanwhile.
async function runActivation(code, previous) {
  for (const id of ["loading", "problem", "missing", "ios"]) {
    setHidden(id, true);
  }
  setHidden("activating", false);
  let record;
  try {
    record = await activate(code);
  } catch (problem) {
    setHidden("activating", true);
    if (problem instanceof ActivationProblem) {
      showProblem(problem, () => runActivation(code, previous));
    } else if (problem && problem.name === "NotSupportedError") {
      setHidden("unsupported", false); // no Ed25519 in this browser's WebCrypto
    } else {
      const failed = { title: "The pass could not be activated", detail: "Please try again.", retry: true };
      showProblem(failed, () => runActivation(code, previous));
    }
    if (previous !== null) {
      startPass(previous);
    } else if (!problem || !problem.retry) {
      showMissing();
    }
    return;
  }
  setHidden("activating", true);
  startPass(record);
}

// Safari on iPhone and iPad (not opened from the Home Screen): its storage is cleared after 7
// days without a visit, and a Home Screen icon does not share it.
function isIosSafari() {
  return navigator.standalone === false;
}

function supported() {
  return Boolean(window.crypto && crypto.subtle && window.indexedDB && window.TextEncoder);
}

const BAD_LINK = {
  title: "This activation link does not work",
  detail: "Check that you opened the whole link, or ask at the front desk for a new one.",
  retry: false,
};

// An activation code as typed: case, spaces and dashes do not matter (as for the cloud).
function typedCode(text) {
  return text.toUpperCase().replace(/[\s-]/g, "");
}

async function main() {
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("sw.js", { scope: "./" }).catch(() => {});
  }
  if (!supported()) {
    setHidden("loading", true);
    setHidden("unsupported", false);
    return;
  }
  const fromLink = activationCodeInUrl();
  if (fromLink !== null) {
    // Out of the address bar at once: not in history, bookmarks or a Home Screen icon.
    dropFragment();
  }
  let record = null;
  try {
    record = await loadPass();
  } catch {
    record = null;
  }
  $("enter-code").addEventListener("submit", (event) => {
    event.preventDefault();
    const code = typedCode($("code-input").value);
    if (!ACTIVATION_CODE.test(code)) {
      showProblem({
        title: "That is not an activation code",
        detail: "An activation code has 16 letters and digits (2 to 7), like ABCD EFGH IJKL MNOP.",
        retry: false,
      });
      return;
    }
    runActivation(code, state.record);
  });
  setHidden("loading", true);
  if (fromLink !== null && !ACTIVATION_CODE.test(fromLink)) {
    showProblem(BAD_LINK);
  } else if (fromLink !== null && isIosSafari()) {
    $("ios-code").textContent = fromLink.match(/.{4}/g).join(" ");
    setHidden("ios", false);
    $("activate-here").onclick = () => runActivation(fromLink, record);
    return;
  } else if (fromLink !== null) {
    await runActivation(fromLink, record);
    return;
  }
  if (record === null) {
    showMissing();
    return;
  }
  startPass(record);
}

main();
