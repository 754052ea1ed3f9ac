// Shared by every page (no build step, no third-party code): the message catalogue, times in
// the site's zone, API calls with the session's CSRF token, and forms that call the API.
"use strict";
(function () {
  const body = document.body;
  const zone = body.dataset.tz || "UTC";
  const textEl = document.getElementById("nvr-text");
  const messages = textEl ? JSON.parse(textEl.textContent) : {};
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');

  function t(key, values) {
    let s = Object.prototype.hasOwnProperty.call(messages, key) ? messages[key] : key;
    if (values) {
      for (const [k, v] of Object.entries(values)) s = s.split("{" + k + "}").join(String(v));
    }
    return s;
  }

  const parts = new Intl.DateTimeFormat("en-CA", {
    timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
    timeZoneName: "longOffset",
  });

  function fields(ms) {
    const out = {};
    for (const p of parts.formatToParts(new Date(ms))) out[p.type] = p.value;
    const z = out.timeZoneName || "GMT";
    out.offset = z === "GMT" ? "+00:00" : z.replace("GMT", "");
    return out;
  }

  // "2026-11-22 16:00:03 +08:00" (date and offset optional; tenths with `tenths`)
  function fmt(ms, opts) {
    const o = opts || {};
    const f = fields(ms);
    let s = f.hour + ":" + f.minute;
    if (o.seconds !== false) s += ":" + f.second;
    if (o.tenths) s += "." + Math.floor((((ms % 1000) + 1000) % 1000) / 100);
    if (o.date !== false) s = f.year + "-" + f.month + "-" + f.day + " " + s;
    if (o.offset !== false) s += " " + f.offset;
    return s;
  }

  // An API refusal shown in the page's language: the problem's `code` names a catalogue
  // message (`problem.<code>`); the English `detail` is kept for a code the page does not know.
  class ApiError extends Error {
    constructor(status, detail, code) {
      const key = "problem." + code;
      const known = code && Object.prototype.hasOwnProperty.call(messages, key);
      super(known ? t(key) : detail);
      this.status = status;
      this.code = code || null;
      this.detail = detail;
    }
  }

  async function problem(r) {
    const type = r.headers.get("content-type") || "";
    const data = type.includes("json") ? await r.json().catch(() => null) : null;
    return new ApiError(r.status, (data && data.detail) || (r.status + " " + r.statusText),
      data && data.code);
  }

  async function api(method, url, payload) {
    const headers = { Accept: "application/json" };
    if (csrfMeta) headers["X-CSRF-Token"] = csrfMeta.content;
    const init = { method, headers, credentials: "same-origin" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const r = await fetch(url, init);
    if (!r.ok) throw await problem(r);
    const type = r.headers.get("content-type") || "";
    return type.includes("json") ? await r.json() : null;
  }

  // a file as the request body (the approval document): its sha256 and size come back
  async function upload(url, file) {
    const headers = { "Content-Type": "application/octet-stream",
      "X-Filename": encodeURIComponent(file.name) };
    if (csrfMeta) headers["X-CSRF-Token"] = csrfMeta.content;
    const r = await fetch(url, { method: "POST", headers, body: file, credentials: "same-origin" });
    if (!r.ok) throw await problem(r);
    const type = r.headers.get("content-type") || "";
    return type.includes("json") ? await r.json() : null;
  }

  function formValues(form) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name || el.type === "submit" || el.type === "file" || el.disabled) continue;
      let v = el.value;
      if (el.hasAttribute("data-list")) {
        v = v.split(",").map((x) => x.trim()).filter((x) => x);
      } else if (el.hasAttribute("data-bool")) {
        v = v === "true";
      } else if (v === "") {
        continue; // optional fields left empty are not sent
      }
      out[el.name] = v;
    }
    return out;
  }

  function say(where, text, ok) {
    if (!where) return;
    where.textContent = text;
    where.classList.toggle("error", !ok);
    where.classList.toggle("ok", !!ok);
  }

  // <form class="api-form" data-url=".." data-method="POST" data-done="reload">
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("api-form")) return;
    ev.preventDefault();
    const where = form.querySelector(".message") ||
      (form.parentElement && form.parentElement.querySelector(".message"));
    const button = form.querySelector("[type=submit]");
    if (button) button.disabled = true;
    try {
      await api(form.dataset.method || "POST", form.dataset.url, formValues(form));
      say(where, t("js.done"), true);
      if (form.dataset.done === "reload") location.reload();
    } catch (err) {
      say(where, t("js.failed", { detail: err.message }), false);
    } finally {
      if (button) button.disabled = false;
    }
  });

  window.Nvr = { t, fmt, fields, api, upload, ApiError, problem, formValues, say, zone };
})();
