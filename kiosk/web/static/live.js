// FitFlow Kiosk owner page: keeps the dashboard's live sections current without reloading.
// Every data-refresh seconds it fetches /live (the same sections rendered by the server) and
// swaps each [data-live] section in place by id. A failed fetch shows "connection lost" and the
// next tick retries; a 401 (signed out: idle too long, or the password changed) goes to /login.
(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh")) || 3;
  var period = Math.max(1, seconds) * 1000;
  var banner = document.getElementById("connection");

  function swap(html) {
    var holder = document.createElement("template");
    holder.innerHTML = html;
    var fresh = holder.content.querySelectorAll("[data-live]");
    for (var i = 0; i < fresh.length; i += 1) {
      var old = document.getElementById(fresh[i].id);
      if (old) {
        old.replaceWith(fresh[i]);
      }
    }
  }

  function lost(isLost) {
    if (banner) {
      banner.hidden = !isLost;
    }
  }

  function tick() {
    fetch("/live", { credentials: "same-origin", cache: "no-store", redirect: "error" })
      .then(function (response) {
        if (response.status === 401 || response.status === 503) {
          window.location.assign("/login");
          return null;
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        if (html !== null) {
          swap(html);
          lost(false);
        }
      })
      .catch(function () {
        lost(true);
      })
      .then(function () {
        window.setTimeout(tick, period);
      });
  }

  window.setTimeout(tick, period);
})();
