// Shared by every page: the /v1 client (session cookie + CSRF header), DOM and format helpers.
"use strict";

const RN = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.code = error.code || "http_error";
      this.details = error.details;
    }
  }

  function toSignIn() {
    const here = location.pathname + location.search;
    location.assign(`/signin?next=${encodeURIComponent(here)}`);
  }

  function headers(method, extra) {
    const h = { Accept: "application/json", ...extra };
    if (method !== "GET" && method !== "HEAD" && csrf) h["X-CSRF-Token"] = csrf;
    return h;
  }

  async function api(path, { method = "GET", json, form } = {}) {
    const init = { method, headers: headers(method, {}), credentials: "same-origin" };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (form !== undefined) {
      init.body = form;
    }
    const response = await fetch(path, init);
    const type = response.headers.get("content-type") || "";
    const body = type.includes("json") ? await response.json() : await response.text();
    if (response.status === 401) toSignIn();
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // An upload with progress (fetch cannot report upload progress; XMLHttpRequest can).
  function upload(path, form, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      for (const [k, v] of Object.entries(headers("POST", {}))) xhr.setRequestHeader(k, v);
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) onProgress(e.loaded / e.total);
      });
      xhr.addEventListener("load", () => {
        let body = xhr.responseText;
        try { body = JSON.parse(body); } catch (_) { /* text */ }
        if (xhr.status === 401) toSignIn();
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else reject(new ApiError(xhr.status, body));
      });
      xhr.addEventListener("error", () => reject(new ApiError(0, null)));
      xhr.send(form);
    });
  }

  // h("td", {class: "num"}, "1.0", child...) -> element; attributes set as attributes, text escaped.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1));
  const num = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toPrecision(digits));
  const fixed = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  function duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
  }
  function bytes(n) {
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }
  const short = (id) => (id ? id.slice(0, 8) : "–");
  function badge(status) {
    return h("span", { class: `badge ${status}`, "data-status": status }, status);
  }
  // A colour per class index, the same in charts and drawn boxes.
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2",
    "#db2777", "#65a30d", "#ea580c", "#4f46e5"];
  const colour = (i) => PALETTE[i % PALETTE.length];

  function fill(tbody, rows, emptyEl) {
    tbody.replaceChildren(...rows);
    if (emptyEl) emptyEl.hidden = rows.length > 0;
  }

  function showError(el, err) {
    el.hidden = false;
    el.textContent = err instanceof ApiError ? `${err.message} (${err.status} ${err.code})` : String(err);
  }

  // Run `fn` now and every `ms` while the page is open; a failed poll is retried next time.
  function every(ms, fn) {
    let timer = null;
    const tick = async () => {
      try { await fn(); } catch (e) { console.warn(e); }
      timer = setTimeout(tick, ms);
    };
    tick();
    return () => clearTimeout(timer);
  }

  const page = document.getElementById("page");
  return { api, upload, ApiError, h, pct, num, fixed, duration, when, bytes, short, badge, colour,
    fill, showError, every, page, id: page?.dataset.id };
})();
