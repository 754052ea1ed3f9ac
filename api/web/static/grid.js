// The camera grid: each tile ([data-camera]) plays live while it is on screen and stops when
// it scrolls away (IntersectionObserver), through window.NvrLive (live.js) with the
// camera's substream; the mode in use is shown on the tile. States refresh every 10 s, and
// so do the cameras the user may see (and when the page becomes visible again): a camera an
// admin withdrew loses its tile and its live view (the server ends that view too), a camera
// granted gets its tile (taken from the server-rendered page).
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const mode = ["auto", "webrtc", "mse"].includes(params.get("live")) ? params.get("live") : "auto";
  const allTiles = () => Array.from(document.querySelectorAll(".tile[data-camera]"));
  const running = new Map();

  function label(tile, text) {
    const el = tile.querySelector("[data-live-label]");
    if (el) el.textContent = text;
  }

  function start(tile) {
    if (running.has(tile)) return;
    if (!window.NvrLive) { label(tile, Nvr.t("js.live_unavailable")); return; }
    const video = tile.querySelector("video");
    const pending = window.NvrLive.attach(video, tile.dataset.camera, { mode, stream: "sub" });
    running.set(tile, pending);
    tile.dataset.live = "starting";
    label(tile, Nvr.t("js.live_starting"));
    pending.then(
      (h) => {
        if (running.get(tile) !== pending) { h.close(); return; }
        tile.dataset.live = h.mode;
        label(tile, Nvr.t("js.live_mode", { mode: h.mode }));
      },
      (err) => {
        if (running.get(tile) === pending) running.delete(tile);
        tile.dataset.live = "failed";
        label(tile, Nvr.t("js.live_failed", { detail: err && err.message ? err.message : err }));
      },
    );
  }

  function stop(tile) {
    const pending = running.get(tile);
    if (!pending) return;
    running.delete(tile);
    tile.dataset.live = "stopped";
    label(tile, Nvr.t("js.live_stopped"));
    pending.then((h) => h.close(), () => {});
  }

  const seen = new IntersectionObserver((entries) => {
    for (const e of entries) (e.isIntersecting ? start : stop)(e.target);
  }, { threshold: 0.05 });
  allTiles().forEach((tile) => seen.observe(tile));
  window.addEventListener("pagehide", () => allTiles().forEach(stop));

  let checking = false;
  async function permitted() {
    if (checking) return;
    checking = true;
    try {
      const names = new Set((await Nvr.api("GET", "/api/cameras")).map((c) => c.name));
      for (const tile of allTiles()) {
        if (names.has(tile.dataset.camera)) continue;
        seen.unobserve(tile);
        stop(tile);
        tile.remove();
      }
      const have = new Set(allTiles().map((tile) => tile.dataset.camera));
      if (![...names].some((n) => !have.has(n))) return;
      const r = await fetch(location.pathname + location.search, { credentials: "same-origin" });
      if (!r.ok) return;
      const page = new DOMParser().parseFromString(await r.text(), "text/html");
      const grid = document.querySelector("section.grid");
      for (const fresh of page.querySelectorAll(".tile[data-camera]")) {
        const name = fresh.dataset.camera;
        if (have.has(name) || !names.has(name)) continue;
        const tile = document.importNode(fresh, true);
        grid.appendChild(tile);
        seen.observe(tile);
      }
    } catch (err) {
      /* the next check tries again; the page keeps what it showed */
    } finally {
      checking = false;
    }
  }
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") permitted();
  });

  async function refresh() {
    try {
      const h = await Nvr.api("GET", "/api/health");
      for (const c of h.cameras) {
        const tile = document.querySelector('.tile[data-camera="' + CSS.escape(c.name) + '"]');
        if (!tile) continue;
        tile.dataset.state = c.state;
        const key = "state." + c.state;
        tile.querySelector(".state").textContent = Nvr.t(key) === key ? c.state : Nvr.t(key);
        const badge = c.state === "recording" ? "recording" : "outage";
        const b = tile.querySelector("[data-badge]");
        b.dataset.badge = badge;
        b.className = "badge badge-" + badge;
        b.textContent = Nvr.t("badge." + badge);
        const pic = tile.querySelector("[data-picture]");
        if (pic && c.picture) {
          const pkey = "picture." + c.picture.state;
          pic.dataset.picture = c.picture.state;
          pic.textContent = Nvr.t(pkey) === pkey ? c.picture.state : Nvr.t(pkey);
          pic.classList.toggle("warn", !["ok", "learning"].includes(c.picture.state));
        }
      }
    } catch (err) { /* the next refresh tries again; the page keeps what it showed */ }
  }
  setInterval(() => { refresh(); permitted(); }, 10000);
})();
