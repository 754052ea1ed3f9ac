// A camera's page: live view of the main stream (window.NvrLive, live.js), the day's
// timeline (recorded spans, gaps with their causes, locks and exports, from the API),
// zoomable (buttons, wheel); a click plays from that moment, a drag selects a range (in and
// out points) and plays it; the wall-clock time of the frame shown is drawn over the video.
// A selection can be locked or requested for export (operators).
"use strict";
(function () {
  const root = document.getElementById("camera");
  if (!root) return;
  const camera = root.dataset.camera;
  const cam = encodeURIComponent(camera);
  const dayStart = Number(root.dataset.dayStart);
  const dayEnd = Number(root.dataset.dayEnd);
  const maxRange = Number(root.dataset.maxRange) || 3600000;
  const MIN_VIEW = 60000;
  // A click plays 10 minutes, then the next 10 follow by themselves: a short file starts
  // fast, and stays under the 15 minutes a request that a camera with privacy masks allows.
  const CHUNK_MS = 600000;
  const tl = document.getElementById("timeline");
  const track = document.getElementById("track");
  const marks = document.getElementById("marks");
  const axis = document.getElementById("axis");
  const selBox = document.getElementById("selection");
  const playhead = document.getElementById("playhead");
  const video = document.getElementById("playback");
  const clock = document.getElementById("wallclock");
  const rangeText = document.getElementById("playback-range");
  const message = document.getElementById("message");
  const gapList = document.getElementById("gaps");
  const inText = document.getElementById("in-text");
  const outText = document.getElementById("out-text");

  let view = [dayStart, dayEnd];
  let data = { spans: [], gaps: [], locks: [] };
  let exportsOf = [];
  let inMs = null;
  let outMs = null;
  let fileStart = null;

  function say(text, ok) { Nvr.say(message, text, ok); }
  function pct(ms) { return ((ms - view[0]) / (view[1] - view[0])) * 100; }

  function place(el, a, b) {
    const l = Math.max(0, pct(a));
    const r = Math.min(100, pct(b));
    if (r <= 0 || l >= 100 || r < l) { el.hidden = true; return; }
    el.hidden = false;
    el.style.left = l + "%";
    el.style.width = Math.max(r - l, 0.2) + "%";
  }

  function timeAt(clientX) {
    const rect = tl.getBoundingClientRect();
    const f = Math.min(1, Math.max(0, (clientX - rect.left) / rect.width));
    return Math.round(view[0] + f * (view[1] - view[0]));
  }

  function causeText(c) {
    const key = "cause." + c.cause;
    const name = Nvr.t(key) === key ? c.cause : Nvr.t(key);
    return c.detail ? name + " (" + c.detail + ")" : name;
  }

  function bar(parent, cls, a, b, title, attrs) {
    const el = document.createElement("div");
    el.className = cls;
    el.title = title;
    for (const [k, v] of Object.entries(attrs || {})) el.dataset[k] = v;
    parent.appendChild(el);
    place(el, a, b);
    return el;
  }

  function span(a, b) {
    return Nvr.fmt(a, { offset: false }) + " – " + Nvr.fmt(b, { date: false });
  }

  function renderAxis() {
    axis.replaceChildren();
    const width = view[1] - view[0];
    const steps = [10e3, 30e3, 60e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 10800e3];
    const step = steps.find((s) => width / s <= 12) || 21600e3;
    const first = dayStart + Math.ceil((view[0] - dayStart) / step) * step;
    for (let t = first; t <= view[1]; t += step) {
      const tick = document.createElement("span");
      tick.className = "tick";
      tick.textContent = Nvr.fmt(t, { date: false, offset: false, seconds: step < 60e3 });
      tick.style.left = pct(t) + "%";
      axis.appendChild(tick);
    }
  }

  function render() {
    renderAxis();
    track.replaceChildren();
    marks.replaceChildren();
    for (const s of data.spans) {
      bar(track, "span", s.start_ms, s.end_ms, span(s.start_ms, s.end_ms),
        { start: s.start_ms, end: s.end_ms });
    }
    for (const g of data.gaps) {
      const causes = g.causes.map(causeText).join("; ") || Nvr.t("js.cause_unknown");
      bar(track, "gap", g.start_ms, g.end_ms, span(g.start_ms, g.end_ms) + ": " + causes,
        { start: g.start_ms, end: g.end_ms, causes: g.causes.map((c) => c.cause).join(",") });
    }
    for (const lk of data.locks) {
      bar(marks, "lock", lk.start_ms, lk.end_ms,
        Nvr.t("js.lock_title", { id: lk.id, reason: lk.reason || "" }), { lock: lk.id });
    }
    for (const p of data.pictures || []) {
      // a picture finding (covered, defocused, re-pointed, frozen, no signal), issue 18
      const key = "picture." + p.kind;
      const kind = Nvr.t(key) === key ? p.kind : Nvr.t(key);
      bar(marks, "picture", p.start_ms, p.end_ms === null ? dayEnd : p.end_ms,
        kind + (p.detail ? ": " + p.detail : ""), { picture: p.id, kind: p.kind });
    }
    for (const e of exportsOf) {
      bar(marks, "export", e.start_ms, e.end_ms,
        Nvr.t("js.export_title", { id: e.id, state: e.state }), { export: e.id, state: e.state });
    }
    if (inMs !== null && outMs !== null) place(selBox, inMs, outMs); else selBox.hidden = true;
    showPlayhead();
  }

  function renderGaps() {
    gapList.replaceChildren();
    if (!data.gaps.length) {
      const li = document.createElement("li");
      li.textContent = Nvr.t("js.no_gaps");
      gapList.appendChild(li);
    }
    for (const g of data.gaps) {
      const li = document.createElement("li");
      li.className = "gap-item";
      li.dataset.start = g.start_ms;
      li.dataset.end = g.end_ms;
      li.dataset.causes = g.causes.map((c) => c.cause).join(",");
      const secs = ((g.end_ms - g.start_ms) / 1000).toFixed(1);
      const causes = g.causes.map(causeText).join("; ") || Nvr.t("js.cause_unknown");
      li.textContent = span(g.start_ms, g.end_ms) + " (" + secs + " s): " + causes;
      gapList.appendChild(li);
    }
  }

  function renderPictures() {
    const list = document.getElementById("pictures");
    list.replaceChildren();
    for (const p of data.pictures || []) {
      const li = document.createElement("li");
      li.dataset.kind = p.kind;
      const key = "picture." + p.kind;
      const kind = Nvr.t(key) === key ? p.kind : Nvr.t(key);
      const until = p.end_ms === null ? Nvr.t("js.still") : Nvr.fmt(p.end_ms, { date: false });
      li.textContent = Nvr.fmt(p.start_ms) + " – " + until + ": " + kind +
        (p.detail ? " (" + p.detail + ")" : "") + " ";
      if (p.snapshot) {
        const a = document.createElement("a");
        a.href = "/api/cameras/" + cam + "/pictures/" + p.id + "/snapshot.jpg";
        a.textContent = Nvr.t("js.snapshot");
        a.target = "_blank";
        a.rel = "noopener";
        li.appendChild(a);
      }
      list.appendChild(li);
    }
    list.hidden = !list.children.length;
  }

  async function load() {
    try {
      data = await Nvr.api("GET", "/api/cameras/" + cam + "/timeline?start=" + dayStart +
        "&end=" + dayEnd);
    } catch (err) {
      say(Nvr.t("js.failed", { detail: err.message }), false);
      return;
    }
    try {
      const found = await Nvr.api("GET", "/api/exports?camera=" + cam);
      exportsOf = found.filter((e) => e.end_ms > dayStart && e.start_ms < dayEnd);
    } catch (err) {
      exportsOf = []; // viewers may not read the export register
    }
    tl.dataset.loaded = String(Date.now());
    render();
    renderGaps();
    renderPictures();
  }

  function zoom(factor, around) {
    const at = around === undefined ? (view[0] + view[1]) / 2 : around;
    let w = Math.max(MIN_VIEW, Math.min(dayEnd - dayStart, (view[1] - view[0]) * factor));
    let a = at - (at - view[0]) * (w / (view[1] - view[0]));
    a = Math.max(dayStart, Math.min(dayEnd - w, a));
    view = [a, a + w];
    render();
  }

  document.querySelectorAll("[data-zoom]").forEach((b) => b.addEventListener("click", () => {
    const how = b.dataset.zoom;
    if (how === "in") zoom(0.5);
    else if (how === "out") zoom(2);
    else { view = [dayStart, dayEnd]; render(); }
  }));
  tl.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    zoom(ev.deltaY > 0 ? 1.25 : 0.8, timeAt(ev.clientX));
  }, { passive: false });

  function setSelection(a, b) {
    inMs = a; outMs = b;
    inText.textContent = a === null ? "" : Nvr.fmt(a);
    inText.dataset.ms = a === null ? "" : String(a);
    outText.textContent = b === null ? "" : Nvr.fmt(b);
    outText.dataset.ms = b === null ? "" : String(b);
    if (a !== null && b !== null && b > a) place(selBox, a, b); else selBox.hidden = true;
  }

  let drag = null;
  tl.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) return;
    drag = { x: ev.clientX, t: timeAt(ev.clientX), moved: false };
    tl.setPointerCapture(ev.pointerId);
  });
  tl.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    if (Math.abs(ev.clientX - drag.x) > 4) drag.moved = true;
    if (drag.moved) {
      const t = timeAt(ev.clientX);
      setSelection(Math.min(drag.t, t), Math.max(drag.t, t));
    }
  });
  tl.addEventListener("pointerup", (ev) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    if (!d.moved) { play(d.t); return; }
    const t = timeAt(ev.clientX);
    const a = Math.min(d.t, t);
    const b = Math.max(d.t, t);
    setSelection(a, b);
    play(a, b);
  });

  function showPlayhead() {
    if (fileStart === null || !video.src) { playhead.hidden = true; return; }
    const now = fileStart + video.currentTime * 1000;
    place(playhead, now, now);
  }

  function tickClock() {
    if (fileStart === null) return;
    const now = Math.round(fileStart + video.currentTime * 1000);
    clock.textContent = Nvr.fmt(now, { tenths: true });
    video.dataset.wallclock = String(now);
    showPlayhead();
  }
  video.addEventListener("timeupdate", tickClock);
  video.addEventListener("ended", () => {
    const end = Number(video.dataset.end);
    if (video.dataset.selection !== "1" && data.spans.some((x) => x.end_ms > end + 500)) {
      play(end);
    }
  });
  video.addEventListener("seeked", tickClock);

  async function play(from, until) {
    const spans = data.spans;
    const s = spans.find((x) => x.end_ms > from);
    if (!s) { say(Nvr.t("js.no_footage"), false); return; }
    const start = Math.max(from, s.start_ms);
    const last = spans[spans.length - 1].end_ms;
    let end = until === undefined ? start + CHUNK_MS : until;
    end = Math.min(end, last, start + maxRange);
    if (end - start < 500) { say(Nvr.t("js.no_footage"), false); return; }
    // Chromium on Linux cannot decode H.265: ask for an H.264 copy of H.265 footage (the
    // server sends H.264 footage as it is, and says X-Transcoded when it made a copy).
    const h264 = video.canPlayType('video/mp4; codecs="hvc1.1.6.L93.B0"') ? "" : "&h264=true";
    const url = "/api/cameras/" + cam + "/recording.mp4?start=" + start + "&end=" + end + h264;
    let begins;
    let transcoded = false;
    try {
      // where the file begins (the keyframe at or before `start`): wall clock = begins + t
      // (a privacy-masked copy still being made comes whole, as it is encoded: only its
      // headers are needed here, and the <video> below reads the same copy as it grows)
      const r = await fetch(url, { headers: { Range: "bytes=0-0" }, credentials: "same-origin" });
      if (!r.ok) throw await Nvr.problem(r);
      if (r.body) r.body.cancel().catch(() => {}); else await r.arrayBuffer();
      begins = Date.parse(r.headers.get("X-Recording-Start"));
      transcoded = r.headers.get("X-Transcoded") === "h264";
      if (Number.isNaN(begins)) throw new Error("no X-Recording-Start");
    } catch (err) {
      say(Nvr.t("js.failed", { detail: err.message }), false);
      return;
    }
    fileStart = begins;
    video.dataset.start = String(start);
    video.dataset.selection = until === undefined ? "0" : "1";
    video.dataset.end = String(end);
    video.dataset.fileStart = String(begins);
    rangeText.textContent = span(start, end);
    video.addEventListener("loadedmetadata", () => {
      video.currentTime = Math.max(0, (start - begins) / 1000);
      video.play().catch((err) => say(Nvr.t("js.failed", { detail: err.message }), false));
    }, { once: true });
    video.src = url;
    video.dataset.transcoded = transcoded ? "h264" : "";
    say(Nvr.t(transcoded ? "js.playing_transcoded" : "js.playing_from", { time: Nvr.fmt(start) }), true);
  }

  function playingAt() {
    return fileStart === null ? null : Math.round(fileStart + video.currentTime * 1000);
  }
  document.getElementById("mark-in").addEventListener("click", () => {
    const t = playingAt();
    if (t !== null) setSelection(t, outMs !== null && outMs > t ? outMs : null);
  });
  document.getElementById("mark-out").addEventListener("click", () => {
    const t = playingAt();
    if (t !== null) setSelection(inMs !== null && inMs < t ? inMs : null, t);
  });
  document.getElementById("play-selection").addEventListener("click", () => {
    if (inMs !== null && outMs !== null) play(inMs, outMs);
  });

  function selection() {
    if (inMs === null || outMs === null || outMs <= inMs) {
      say(Nvr.t("js.select_first"), false);
      return null;
    }
    return { camera, start: inMs, end: outMs };
  }

  const lockForm = document.getElementById("lock-form");
  if (lockForm) lockForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const sel = selection();
    if (!sel) return;
    try {
      const made = await Nvr.api("POST", "/api/locks", { ...sel, ...Nvr.formValues(lockForm) });
      say(Nvr.t("js.locked", { id: made.id, until: made.expires_ms ? Nvr.fmt(made.expires_ms) : "—" }), true);
      lockForm.reset();
      await load();
    } catch (err) {
      say(Nvr.t("js.failed", { detail: err.message }), false);
    }
  });

  const exportForm = document.getElementById("export-form");
  if (exportForm) exportForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const sel = selection();
    if (!sel) return;
    try {
      const values = Nvr.formValues(exportForm);
      const file = exportForm.querySelector('input[name="document_file"]').files[0];
      if (file) {
        // the document itself is kept; the request names it by its SHA-256, which the
        // export's signed manifest then carries
        const doc = await Nvr.upload("/exports/documents", file);
        values.approval_document += " [" + doc.name + ", sha256:" + doc.sha256 + "]";
      }
      const made = await Nvr.api("POST", "/api/exports", { ...sel, ...values });
      say(Nvr.t("js.export_requested", { id: made.id }), true);
      exportForm.reset();
      await load();
    } catch (err) {
      say(Nvr.t("js.failed", { detail: err.message }), false);
    }
  });

  // live view of the main stream
  const liveFigure = document.querySelector("[data-live-camera]");
  const liveLabel = liveFigure.querySelector("[data-live-label]");
  const params = new URLSearchParams(location.search);
  const mode = ["auto", "webrtc", "mse"].includes(params.get("live")) ? params.get("live") : "auto";
  let live = null;
  if (window.NvrLive) {
    liveLabel.textContent = Nvr.t("js.live_starting");
    // the camera's audio too (WebRTC: Opus), muted until the viewer unmutes it
    live = window.NvrLive.attach(document.getElementById("live"), camera,
      { mode, stream: "main", audio: true });
    live.then((h) => {
      const sound = h.audio === "opus" ? " + Opus" : "";
      liveLabel.textContent = Nvr.t("js.live_mode", { mode: h.mode + sound });
    },
      (err) => { liveLabel.textContent = Nvr.t("js.live_failed", { detail: err.message || err }); });
    window.addEventListener("pagehide", () => live.then((h) => h.close(), () => {}));
  } else {
    liveLabel.textContent = Nvr.t("js.live_unavailable");
  }

  load();
  if (Date.now() < dayEnd) setInterval(load, 30000);
})();
