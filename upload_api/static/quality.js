/* Job page, Quality panel: the job's quality checks (GET /api/jobs/{id}/quality, read from Dagster's asset check
   evaluations) with their figures; a failed check names its lines, each a link to that line in the editor; for a
   job that needs review, "Publish anyway" (POST /api/jobs/{id}/publish). It loads when the job has finished and
   again whenever job.js reports a new state (the "job:state" event). */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const $ = (id) => document.getElementById(id);
  const jobId = document.body.dataset.jobId;
  const base = "/api/jobs/" + encodeURIComponent(jobId);
  const FINISHED = new Set(["done", "failed", "cancelled", "needs_review"]);
  const NAMES = {
    speech_speed: "Speaking speed", speech_kept: "Every word kept", coverage: "Every line audible",
    no_overlap: "No overlaps", round_trip: "Heard again (WER)", loudness: "Loudness",
    output_streams: "Tracks and subtitles", sync: "In sync",
  };
  const STATUS_TEXT = { passed: "Passed", failed: "Failed", warning: "Warning", accepted: "Accepted", skipped: "Skipped",
                        not_run: "Not run" };
  // the figures shown per check (metadata key: label), and the metadata lists that name lines
  const FIGURES = {
    speech_speed: { speed_p50: "p50 speed", speed_p95: "p95 speed", speed_max: "max", max_speed_allowed: "limit",
                    borrowed_s: "silence borrowed (s)" },
    speech_kept: { cut_count: "lines cut", cut_s: "seconds cut", held_s: "picture held (s)", fit: "fit" },
    coverage: { segments: "lines", quietest_dbfs: "quietest (dBFS)" },
    no_overlap: { segments: "lines" },
    round_trip: { wer: "word error rate", max_wer: "limit", reason: "why skipped" },
    loudness: { integrated_lufs: "LUFS", target_lufs: "target", true_peak_dbtp: "true peak (dBTP)",
                max_true_peak_dbtp: "limit" },
    output_streams: { video: "video", audio: "audio tracks", subtitles: "subtitle tracks" },
    sync: { sync_error_p95_ms: "p95 onset error (ms)", track_length_error_ms: "track length error (ms)",
            subtitle_mismatches: "subtitle mismatches" },
  };
  const LINES = { speech_speed: "too_fast", speech_kept: "cut_segments", coverage: "silent_segments",
                  sync: "out_of_sync" };
  let loaded = null;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function lineIds(check) {
    const list = check.metadata[LINES[check.name]];
    if (!Array.isArray(list)) return [];
    return list.map((x) => (typeof x === "object" && x !== null ? x.id : x)).filter((x) => x !== undefined);
  }

  function goToLine(id) {
    const li = document.querySelector('#segments li[data-segment-id="' + id + '"]');
    if (!li) {
      $("quality-status").textContent = "Line " + id + " is not in the editor yet: it opens when the job has finished.";
      return;
    }
    li.scrollIntoView({ block: "center" });
    const input = li.querySelector("textarea, input");
    if (input) input.focus();
  }

  function render(q) {
    loaded = q;
    $("quality").hidden = false;
    $("quality-summary").textContent = q.summary;
    const list = $("checks");
    list.textContent = "";
    for (const c of q.checks) {
      const li = el("li", "qcheck");
      li.dataset.check = c.name;
      const head = el("div", "qcheck-head");
      head.append(el("span", "qcheck-name", NAMES[c.name] || c.name));
      const badge = el("span", "badge state-" + c.status, STATUS_TEXT[c.status] || c.status);
      badge.dataset.field = "status";
      head.append(badge);
      if (c.blocking) head.append(el("span", "muted small", "blocks publishing"));
      li.append(head);
      li.append(el("p", "small", c.description));
      const figures = Object.entries(FIGURES[c.name] || {})
        .filter(([key]) => c.metadata[key] !== undefined && c.metadata[key] !== null && c.metadata[key] !== "")
        .map(([key, label]) => label + ": " + c.metadata[key]);
      if (figures.length) li.append(el("p", "small muted", figures.join(" · ")));
      const ids = c.status === "passed" ? [] : lineIds(c);
      if (ids.length) {
        const lines = el("ul", "qcheck-lines");
        lines.setAttribute("aria-label", "Lines " + (NAMES[c.name] || c.name) + " names");
        for (const id of ids.slice(0, 50)) {
          const a = el("a", "", "Line " + id);
          a.href = "#seg-" + id + "-title";
          a.addEventListener("click", (ev) => { ev.preventDefault(); goToLine(id); });
          const item = el("li");
          item.append(a);
          lines.append(item);
        }
        li.append(lines);
      }
      list.append(li);
    }
    $("review-box").hidden = document.body.dataset.state !== "needs_review";
  }

  async function load() {
    try {
      render(await Dub.api("GET", base + "/quality", { timeoutMs: 20000 }));
      Dub.showError($("quality-error"), "");
    } catch (e) {
      if (e.status === 401) return Dub.toLogin();
      Dub.showError($("quality-error"), "could not load the quality checks: " + Dub.errorText(e));
    }
  }

  $("publish").addEventListener("click", async () => {
    const failed = loaded ? loaded.checks.filter((c) => c.status === "failed").map((c) => NAMES[c.name] || c.name) : [];
    if (!confirm("Publish this dub although " + (failed.join(", ") || "a check") + " failed?")) return;
    const button = $("publish");
    button.disabled = true;
    Dub.showError($("quality-error"), "");
    try {
      const r = await Dub.api("POST", base + "/publish", { timeoutMs: 30000 });
      $("quality-status").textContent = r.queued
        ? "Publishing: the last stages run again with " + r.accepted.join(", ") + " accepted; follow it under Runs."
        : "Publishing was already asked for: follow it under Runs.";
      $("review-box").hidden = true;
      document.dispatchEvent(new CustomEvent("job:awaitRun"));
    } catch (e) {
      if (e.status === 401) return Dub.toLogin();
      Dub.showError($("quality-error"), "could not publish: " + Dub.errorText(e));
    } finally {
      button.disabled = false;
    }
  });

  document.addEventListener("job:state", (ev) => {
    const state = ev.detail.state;
    $("review-box").hidden = state !== "needs_review";
    if (FINISHED.has(state)) load();
  });
  if (FINISHED.has(document.body.dataset.state)) load();
});
