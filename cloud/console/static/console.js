// The console's small progressive enhancements: every page works without this file.
// - an invitation link (/console/invite#<token>): the token goes into the form and out of the
//   address bar (so it is not left in the history);
// - forms with data-confirm ask before they are sent;
// - a "Copy" button beside a link shown once.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const tokenField = document.querySelector("[data-invite-token]");
  if (tokenField && location.hash.length > 1) {
    tokenField.value = decodeURIComponent(location.hash.slice(1));
    history.replaceState(null, "", location.pathname);
  }
  if (tokenField && tokenField.value) {
    tokenField.closest("label").classList.add("filled");
  }

  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }

  const source = document.querySelector("[data-copy-source]");
  const copy = document.querySelector("[data-copy]");
  if (source && copy && navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(source.value);
        copy.textContent = "Copied";
      } catch {
        source.select();
      }
    });
  }
});

// Today (/console/): check-ins arrive as server-sent events from /console/live and take their
// place in the list (newest first) without a reload; an annulment marks its row. The browser's
// EventSource reconnects by itself with Last-Event-ID; when the stream is closed for good (the
// server was busy, or restarted) a new one resumes after the last event seen (?after=). Rows are
// built with textContent only. Without this script the page shows the latest at each reload.
document.addEventListener("DOMContentLoaded", () => {
  const list = document.querySelector("tbody[data-live]");
  if (!list || !window.EventSource || !window.Intl) return;
  const words = JSON.parse(list.dataset.words);
  const gyms = JSON.parse(list.dataset.gyms);
  const manyGyms = Object.keys(gyms).length > 1;
  const empty = list.querySelector("[data-empty]");
  const state = document.querySelector("[data-live-state]");
  const refusals = document.querySelector("tbody[data-refusals]");
  const clocks = {};
  let lastId = "";
  let source = null;
  let failures = 0;

  const formats = (zone) => {
    if (!clocks[zone]) {
      clocks[zone] = {
        time: new Intl.DateTimeFormat("en-GB", {
          timeZone: zone, hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
        }),
        day: new Intl.DateTimeFormat("en-CA", {
          timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
        }),
      };
    }
    return clocks[zone];
  };
  // Stored times carry microseconds; Date reads milliseconds.
  const moment = (text) => new Date(text.replace(/(\.\d{3})\d*Z$/, "$1Z"));
  const show = (text) => {
    if (!state) return;
    state.hidden = !text;
    state.textContent = text;
  };
  const byId = (id) => {
    for (const tr of list.querySelectorAll("tr[data-id]")) if (tr.dataset.id === id) return tr;
    return null;
  };
  const bump = (key, delta) => {
    const total = document.querySelector(`[data-total="${key}"]`);
    if (total) total.textContent = String(Number(total.textContent) + delta);
  };
  const td = (tr, text, className) => {
    const cell = document.createElement("td");
    if (className) cell.className = className;
    if (text !== undefined) cell.textContent = text;
    tr.append(cell);
    return cell;
  };
  const small = (parent, text) => {
    const note = document.createElement("small");
    note.textContent = text;
    parent.append(" ", note);
  };
  const memberName = (data) => {
    if (!data.member_id) return words.unknown_member;
    if (data.first_name == null && data.last_name == null) return words.former_member;
    return `${data.first_name || ""} ${data.last_name || ""}`.trim();
  };
  const markAnnulled = (tr) => {
    tr.classList.add("annulled");
    const annul = document.createElement("em");
    annul.className = "annul";
    annul.textContent = "annulled";
    tr.cells[3].append(" ", annul);
    small(tr.cells[4], `· ${words.annulled}`);
  };

  const build = (data, gym) => {
    const tr = document.createElement("tr");
    const granted = data.decision === "granted";
    tr.dataset.id = data.id;
    tr.dataset.at = data.occurred_at;
    tr.className = `${granted ? "granted" : "refused"} fresh`;
    td(tr, formats(gym.zone).time.format(moment(data.occurred_at)), "nowrap");
    const who = td(tr);
    const name = memberName(data);
    if (data.member_id && data.first_name != null) {
      const link = document.createElement("a");
      link.href = `/console/members/${encodeURIComponent(data.member_id)}`;
      link.textContent = name;
      who.append(link);
    } else {
      who.textContent = name;
    }
    if (data.pass_id) small(who, "phone pass");
    const door = td(tr, data.device_name || data.door_id);
    if (manyGyms) small(door, gym.name);
    const decision = td(tr);
    const span = document.createElement("span");
    span.className = "decision";
    span.textContent = words.decisions[data.decision] || data.decision;
    decision.append(span);
    const reason = td(tr, words.reasons[data.reason] || `Other reason (${data.reason})`);
    if (data.overdraft) small(reason, "· overdraft");
    if (data.annulled) markAnnulled(tr);
    return tr;
  };

  const place = (tr) => {
    // Newest first by (occurred_at, id): a door that uploads late lands at its time.
    for (const other of list.querySelectorAll("tr[data-id]")) {
      const at = other.dataset.at;
      if (at < tr.dataset.at || (at === tr.dataset.at && other.dataset.id < tr.dataset.id)) {
        list.insertBefore(tr, other);
        return;
      }
    }
    list.insertBefore(tr, empty);
  };

  const countRefusal = (data) => {
    if (!refusals) return;
    const text = words.reasons[data.reason] || `Other reason (${data.reason})`;
    for (const tr of refusals.querySelectorAll("tr[data-reason]")) {
      if (tr.dataset.reason === data.reason) {
        const count = tr.querySelector("[data-count]");
        count.textContent = String(Number(count.textContent) + 1);
        return;
      }
    }
    const tr = document.createElement("tr");
    tr.dataset.reason = data.reason;
    td(tr, text);
    td(tr, "1").dataset.count = "";
    const none = refusals.querySelector("[data-empty]");
    refusals.insertBefore(tr, none);
    if (none) none.hidden = true;
  };

  const onCheckin = (event) => {
    lastId = event.lastEventId || lastId;
    const data = JSON.parse(event.data);
    const gym = gyms[data.gym_id];
    if (!gym || byId(data.id)) return; // another gym's, or shown already
    // A check-in of an earlier day, uploaded late, is not today's.
    if (formats(gym.zone).day.format(moment(data.occurred_at)) < gym.date) return;
    place(build(data, gym));
    if (empty) empty.hidden = true;
    if (data.decision === "granted") {
      bump(data.annulled ? "annulled" : "admitted", 1);
    } else {
      bump("refused", 1);
      countRefusal(data);
    }
  };

  const onPassage = (event) => {
    lastId = event.lastEventId || lastId;
    const data = JSON.parse(event.data);
    if (data.kind !== "annulled" || !data.checkin_id) return;
    const tr = byId(data.checkin_id);
    if (!tr || tr.classList.contains("annulled")) return;
    markAnnulled(tr);
    if (tr.classList.contains("granted")) {
      bump("admitted", -1);
      bump("annulled", 1);
    }
  };

  const connect = () => {
    let url = list.dataset.live;
    if (lastId) url = url.replace(/([?&]after=)[^&]*/, `$1${encodeURIComponent(lastId)}`);
    source = new EventSource(url);
    source.addEventListener("ready", () => {
      failures = 0;
      show("live");
    });
    source.addEventListener("checkin", onCheckin);
    source.addEventListener("passage", onPassage);
    // More was missed than the server replays: the page itself has it all.
    source.addEventListener("reset", () => window.location.reload());
    source.addEventListener("error", () => {
      show("reconnecting…");
      if (source.readyState !== EventSource.CLOSED) return; // the browser retries by itself
      failures += 1;
      window.setTimeout(connect, Math.min(60, 2 ** failures) * 1000);
    });
  };
  connect();
});

// Members: the search box fills in its results as one types (the page at the same address is
// fetched and its result list swapped in; without this script the box is a plain GET form), and
// a card's print button.
document.addEventListener("DOMContentLoaded", () => {
  const box = document.querySelector("input[data-live-search]");
  if (box && window.fetch && window.DOMParser) {
    const form = box.form;
    let timer = 0;
    let pending = null;
    const refresh = async () => {
      if (pending) pending.abort();
      pending = new AbortController();
      const query = new URLSearchParams(new FormData(form)).toString();
      const url = `${form.getAttribute("action")}?${query}`;
      try {
        const answer = await fetch(url, { signal: pending.signal, credentials: "same-origin" });
        if (!answer.ok || answer.redirected) return;
        const page = new DOMParser().parseFromString(await answer.text(), "text/html");
        const fresh = page.getElementById(box.dataset.liveSearch);
        const shown = document.getElementById(box.dataset.liveSearch);
        if (fresh && shown) shown.replaceWith(document.adoptNode(fresh));
        history.replaceState(null, "", url);
      } catch (error) {
        if (error.name !== "AbortError") throw error;
      }
    };
    box.addEventListener("input", () => {
      window.clearTimeout(timer);
      timer = window.setTimeout(refresh, 200);
    });
  }

  const print = document.querySelector("button[data-print]");
  if (print) {
    print.hidden = false;
    print.addEventListener("click", () => window.print());
  }
});
