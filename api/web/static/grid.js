// The camera grid: each tile ([data-camera]) plays live while it is on screen and stops when
// it scrolls away (IntersectionObserver), through window.NvrLive (live.js) with the
// camera's substream; the mode in use is shown on the tile. States refresh every 10 s.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const mode = ["auto", "webrtc", "mse"].includes(params.get("live")) ? params.get("live") : "auto";
  const tiles = Array.from(document.querySelectorAll(".tile[data-camera]"));
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
  tiles.forEach((tile) => seen.observe(tile));
  window.addEventListener("pagehide", () => tiles.forEach(stop));

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
  setInterval(refresh, 10000);
})();
