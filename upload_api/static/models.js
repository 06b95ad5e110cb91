/* /ui/models: prewarm buttons. POST /api/runtime/models/prewarm with the row's model id; the row
   shows "Loaded" and the load time, or the server's reason (409 when the model is not ready). */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  function cacheText(cache) {
    const n = cache && cache.loaded ? cache.loaded.length : 0;
    let text = n + (n === 1 ? " model" : " models");
    if (cache && cache.approx_total_mb) text += " (about " + Math.round(cache.approx_total_mb) + " MB)";
    return text;
  }

  async function prewarm(btn) {
    const row = btn.closest("tr");
    const id = row.dataset.modelId;
    const name = btn.dataset.name || id;
    const out = row.querySelector('[data-field="cache-text"]');
    btn.disabled = true;
    btn.textContent = "Loading…";
    out.textContent = "";
    Dub.showError($("models-error"), "");
    $("models-status").textContent = "Loading " + name + "…";
    try {
      const res = await Dub.api("POST", "/api/runtime/models/prewarm", { body: { models: [id] }, timeoutMs: 600000 });
      const result = (res.results || [])[0] || {};
      const badge = document.createElement("span");
      badge.className = "badge state-done";
      badge.dataset.field = "loaded";
      badge.textContent = "Loaded";
      btn.replaceWith(badge);
      if (result.status === "loaded" && typeof result.load_s === "number") {
        out.textContent = " in " + result.load_s.toFixed(1) + " s";
      }
      $("models-status").textContent = name + ": " + (result.status || "loaded") + ".";
      $("cache-text").textContent = cacheText(res.cache);
    } catch (e) {
      if (e instanceof Dub.ApiError && e.status === 401) return Dub.toLogin();
      btn.disabled = false;
      btn.textContent = "Prewarm";
      $("models-status").textContent = "";
      Dub.showError($("models-error"), name + ": " + Dub.errorText(e));
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll('button[data-action="prewarm"]').forEach((btn) => {
      btn.addEventListener("click", () => prewarm(btn));
    });
  });
})();
