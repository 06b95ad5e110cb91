/* /ui/models: prewarm buttons. POST /api/runtime/models/prewarm with the row's model id; the row
   shows "Loaded" and the load time, or the server's reason (409 when the model is not ready).
   Reprocessing panel: POST /api/runtime/reprocess with {rule, limit, dry_run: true} lists the picks
   ("Preview"); "Reprocess these now" sends dry_run: false and says what was queued. */
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

  /* --- reprocessing ---------------------------------------------------------------------------- */

  const RULE_TEXT = { transient: "Transient failure", outdated: "Older engine version" };
  let busy = false;
  /* key -> pick, for every pick this page queued: the server does not pick a queued key again, so a later
     "Reprocess these now" lists them here as already queued rather than leaving them out */
  const queuedHere = new Map();

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  function limitValue() {
    const input = $("reprocess-limit");
    const text = input.value.trim();
    const n = Number(text);
    const ok = /^[0-9]+$/.test(text) && n >= 1 && n <= 100;
    if (ok) input.removeAttribute("aria-invalid");
    else input.setAttribute("aria-invalid", "true");
    return ok ? n : null;
  }

  function pickItem(p, labels, afterRun) {
    const li = document.createElement("li");
    li.className = "pick";
    li.dataset.jobId = p.job_id;
    li.dataset.key = p.key;
    const head = document.createElement("div");
    head.className = "pick-head";
    const link = document.createElement("a");
    link.href = "/ui/jobs/" + encodeURIComponent(p.job_id);
    link.className = "pick-job";
    link.textContent = p.job_id;
    const rule = document.createElement("span");
    rule.className = "badge pick-rule";
    rule.dataset.field = "rule";
    rule.textContent = RULE_TEXT[p.rule] || p.rule;
    head.append(link, rule);
    if (afterRun) {
      const state = document.createElement("span");
      state.dataset.field = "queued";
      if (p.queued) {
        state.className = "badge state-queued";
        state.textContent = "Queued";
      } else {
        state.className = "badge state-skipped";
        state.textContent = "Already queued before";
      }
      head.append(state);
    }
    const reason = document.createElement("p");
    reason.className = "pick-reason";
    reason.dataset.field = "reason";
    reason.textContent = p.reason;
    const from = document.createElement("p");
    from.className = "muted small";
    from.dataset.field = "from";
    const first = (p.stages || [])[0];
    from.textContent = first ? "Runs again from: " + (labels[first] || first) + " (" + first + ")" : "";
    li.append(head, reason, from);
    return li;
  }

  function showPicks(picked, afterRun) {
    const list = $("reprocess-list");
    const labels = Dub.bodyData("stageLabels", {}) || {};
    list.replaceChildren(...picked.map((p) => pickItem(p, labels, afterRun)));
    list.hidden = picked.length === 0;
  }

  function summary(res) {
    const picked = res.picked || [];
    if (res.dry_run) {
      if (!picked.length) return "Nothing to reprocess for this rule now.";
      return "Preview, nothing queued yet: " + plural(picked.length, "job", "jobs") + " would run again.";
    }
    if (!picked.length) {
      return "Nothing to reprocess now (a job queued or run again for the same reason is not picked twice).";
    }
    const queued = picked.filter((p) => p.queued).length;
    const before = picked.length - queued;
    let text = "Queued " + plural(queued, "job", "jobs") + ": the run request sensor starts " +
               (queued === 1 ? "it" : "them") + " within seconds.";
    if (queued === 0) text = "Queued nothing new.";
    if (before) text += " " + plural(before, "job was", "jobs were") + " already queued before.";
    return text;
  }

  function stale() {
    /* the rule or the limit changed: the preview no longer says what "Reprocess these now" would do */
    $("reprocess-run").disabled = true;
    $("reprocess-list").replaceChildren();
    $("reprocess-list").hidden = true;
    $("reprocess-status").textContent = "";
    Dub.showError($("reprocess-error"), "");
  }

  async function reprocess(dryRun) {
    if (busy) return;
    const limit = limitValue();
    if (limit === null) {
      Dub.showError($("reprocess-error"), "“At most” must be a whole number from 1 to 100.");
      $("reprocess-limit").focus();
      return;
    }
    const rule = $("reprocess-rule").value;
    const form = $("reprocess-form");
    busy = true;
    form.setAttribute("aria-busy", "true");
    Dub.showError($("reprocess-error"), "");
    $("reprocess-status").textContent = dryRun ? "Checking which jobs the rule picks…" : "Queuing…";
    try {
      const res = await Dub.api("POST", "/api/runtime/reprocess",
                                { body: { rule, limit, dry_run: dryRun }, timeoutMs: 120000 });
      const picked = res.picked || [];
      if (!dryRun) {
        const keys = new Set(picked.map((p) => p.key));
        queuedHere.forEach((p, key) => {
          if (!keys.has(key) && (rule === "all" || rule === p.rule)) {
            picked.push(Object.assign({}, p, { queued: false }));
          }
        });
        picked.forEach((p) => { if (p.queued) queuedHere.set(p.key, p); });
        res.picked = picked;
      }
      showPicks(picked, !dryRun);
      $("reprocess-status").textContent = summary(res);
      if (dryRun) $("reprocess-run").disabled = picked.length === 0;
    } catch (e) {
      if (e instanceof Dub.ApiError && e.status === 401) return Dub.toLogin();
      $("reprocess-status").textContent = "";
      Dub.showError($("reprocess-error"), (dryRun ? "Preview" : "Reprocess") + ": " + Dub.errorText(e));
    } finally {
      busy = false;
      form.removeAttribute("aria-busy");
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll('button[data-action="prewarm"]').forEach((btn) => {
      btn.addEventListener("click", () => prewarm(btn));
    });
    const form = $("reprocess-form");
    if (form) {
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        reprocess(true);
      });
      $("reprocess-run").addEventListener("click", () => reprocess(false));
      $("reprocess-rule").addEventListener("change", stale);
      $("reprocess-limit").addEventListener("input", () => {
        $("reprocess-limit").removeAttribute("aria-invalid");
        stale();
      });
    }
  });
})();
