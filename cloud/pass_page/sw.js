// FitFlow pass page: the service worker (scope /pass/). It keeps the page's own files (the app
// shell) so the pass opens with no network at all: cached on install, served cache-first. The
// pass API (/pass/v1/...) is never cached or answered from a cache: it always goes to the
// network, and simply fails offline.
//
// The server writes a digest of the shell's files into SHELL_VERSION, so any change to them is a
// new service worker: it installs the new files beside the old, takes over, and deletes the old.

const SHELL_VERSION = "__SHELL_VERSION__";
const CACHE = `fitflow-pass-${SHELL_VERSION}`;
const SCOPE = new URL(self.registration.scope).pathname; // "/pass/"
const SHELL = ["", "app.js", "qr.js", "style.css", "manifest.webmanifest", "icon.svg"].map(
  (name) => SCOPE + name,
);

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      // "reload": straight from the server, never a stale copy from the HTTP cache.
      .then((cache) => cache.addAll(SHELL.map((path) => new Request(path, { cache: "reload" }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) =>
        Promise.all(
          names
            .filter((name) => name.startsWith("fitflow-pass-") && name !== CACHE)
            .map((name) => caches.delete(name)),
        ),
      )
      .then(() => self.clients.claim()),
  );
});

// The cached copy a request stands for, or null (not part of the shell: the network's business).
function shellPath(request) {
  if (request.method !== "GET") {
    return null;
  }
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || url.pathname.startsWith(`${SCOPE}v1/`)) {
    return null;
  }
  if (url.pathname === `${SCOPE}index.html`) {
    return SCOPE;
  }
  return SHELL.includes(url.pathname) ? url.pathname : null;
}

self.addEventListener("fetch", (event) => {
  const path = shellPath(event.request);
  if (path === null) {
    return; // not answered here: the browser goes to the network as usual
  }
  event.respondWith(
    caches
      .open(CACHE)
      .then((cache) => cache.match(path))
      .then((hit) => hit || fetch(event.request)),
  );
});
