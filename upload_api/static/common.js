/* Shared helpers of the web UI: API calls with the session's CSRF token, error text, formatting,
   logout. Data from the server is only ever put into the page with textContent. */
"use strict";

(function () {
  const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function bodyData(name, fallback) {
    const raw = document.body.dataset[name];
    if (raw === undefined) return fallback;
    try { return JSON.parse(raw); } catch (e) { return raw; }
  }

  class ApiError extends Error {
    /* kind: "network" (no answer), "http" (an answer with an error status) */
    constructor(kind, status, detail, data) {
      super(detail);
      this.kind = kind;
      this.status = status;
      this.detail = detail;
      this.data = data || null;
    }
    get transient() {
      return this.kind === "network" || this.status >= 500 || this.status === 408 || this.status === 429;
    }
  }

  function detailText(data, status) {
    if (data && typeof data.detail === "string" && data.detail) return data.detail;
    if (data && Array.isArray(data.detail)) return data.detail.map((d) => d.msg || String(d)).join("; ");
    return "the server answered HTTP " + status;
  }

  /* fetch with the session cookie and, on unsafe methods, the CSRF header. Resolves with the parsed
     JSON (or null); rejects with ApiError. opts: {body (JSON-able or BodyInit), headers, signal, timeoutMs} */
  async function api(method, url, opts) {
    opts = opts || {};
    const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    let body = opts.body;
    if (body !== undefined && !(body instanceof ArrayBuffer) && !(body instanceof Blob)) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(body);
    }
    if (UNSAFE.has(method)) headers["X-CSRF-Token"] = csrf();
    const ctrl = new AbortController();
    const onAbort = () => ctrl.abort();
    if (opts.signal) {
      if (opts.signal.aborted) ctrl.abort();
      opts.signal.addEventListener("abort", onAbort);
    }
    const timer = opts.timeoutMs ? setTimeout(() => ctrl.abort(), opts.timeoutMs) : null;
    let resp;
    try {
      resp = await fetch(url, { method, headers, body, credentials: "same-origin", signal: ctrl.signal,
                                cache: "no-store" });
    } catch (e) {
      if (opts.signal && opts.signal.aborted) throw new ApiError("aborted", 0, "stopped");
      const why = ctrl.signal.aborted ? "the server did not answer in time" : "the network connection failed";
      throw new ApiError("network", 0, why);
    } finally {
      if (timer) clearTimeout(timer);
      if (opts.signal) opts.signal.removeEventListener("abort", onAbort);
    }
    let data = null;
    const type = resp.headers.get("content-type") || "";
    if (type.includes("json")) {
      try { data = await resp.json(); } catch (e) { data = null; }
    }
    if (!resp.ok) throw new ApiError("http", resp.status, detailText(data, resp.status), data);
    return data;
  }

  /* Text for an error, for people: the server's detail when there is one. */
  function errorText(err) {
    if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
    if (err.kind === "network") return "No connection to the server: " + err.detail + ".";
    if (err.status === 401) return "Your session has ended: log in again (" + err.detail + ").";
    return err.detail + " (HTTP " + err.status + ")";
  }

  function toLogin() {
    location.assign("/ui/login?next=" + encodeURIComponent(location.pathname + location.search));
  }

  function showError(el, text) {
    if (!el) return;
    if (text) {
      el.textContent = "Error: " + text;
      el.hidden = false;
    } else {
      el.textContent = "";
      el.hidden = true;
    }
  }

  function bytes(n) {
    if (n === null || n === undefined || isNaN(n)) return "";
    const units = ["bytes", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n >= 100 ? 0 : 1)) + " " + units[i];
  }

  function duration(s) {
    if (s === null || s === undefined || isNaN(s)) return "";
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(Math.round(s) / 60), sec = Math.round(s) % 60;
    return m < 60 ? m + " min " + sec + " s" : Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function localTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach((t) => {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) t.textContent = d.toLocaleString();
    });
  }

  function setState(badge, state, texts) {
    badge.textContent = (texts && texts[state]) || state || "";
    badge.dataset.state = state || "";
    badge.className = "badge state-" + (state || "unknown");
  }

  async function logout() {
    try {
      await api("POST", "/api/auth/logout");
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 401) {
        alert("Could not log out: " + errorText(e));
        return;
      }
    }
    location.assign("/ui/login");
  }

  document.addEventListener("DOMContentLoaded", () => {
    const btn = document.getElementById("logout");
    if (btn) btn.addEventListener("click", logout);
    localTimes(document);
  });

  window.Dub = { api, ApiError, errorText, csrf, bodyData, showError, bytes, duration, localTimes, setState,
                 toLogin };
})();
