/* Dashboard: my jobs as cards, refreshed every few seconds from GET /api/jobs (while the tab is
   visible). Cards are cloned from a <template> and filled with textContent. */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("jobs");
  const tpl = document.getElementById("job-card");
  const status = document.getElementById("jobs-status");
  const errBox = document.getElementById("jobs-error");
  const empty = document.getElementById("jobs-empty");
  const userId = document.body.dataset.userId;
  const stageLabels = Dub.bodyData("stageLabels", {});
  const stateText = Dub.bodyData("stateText", {});
  const langNames = Dub.bodyData("langNames", {});
  const POLL_MS = 3000;
  let timer = null;
  let lastStates = {};

  function lang(code) { return langNames[code] || code; }

  function fill(card, job) {
    card.dataset.jobId = job.job_id;
    const link = card.querySelector('[data-field="link"]');
    link.textContent = job.filename;
    link.setAttribute("href", "/ui/jobs/" + encodeURIComponent(job.job_id));
    card.querySelector('[data-field="langs"]').textContent = lang(job.source_lang) + " → " + lang(job.target_lang);
    Dub.setState(card.querySelector('[data-field="state"]'), job.state, stateText);
    const stage = job.current_stage && job.state !== "done" ? "Stage: " + (stageLabels[job.current_stage] || job.current_stage) : "";
    card.querySelector('[data-field="stage"]').textContent = stage;
    card.querySelector('[data-field="last"]').textContent = job.review
      ? "Not published: " + job.review.map((r) => r.check).join(", ") + " failed"
      : job.last_log_line || "";
    const t = card.querySelector('[data-field="created"]');
    if (t.getAttribute("datetime") !== job.created_at) {
      t.setAttribute("datetime", job.created_at);
      t.textContent = new Date(job.created_at).toLocaleString();
    }
  }

  function render(jobs) {
    const existing = {};
    list.querySelectorAll(".job-card").forEach((c) => { existing[c.dataset.jobId] = c; });
    const changes = [];
    let before = null;
    // newest first, as the API answers
    for (let i = jobs.length - 1; i >= 0; i--) {
      const job = jobs[i];
      let card = existing[job.job_id];
      if (!card) card = tpl.content.firstElementChild.cloneNode(true);
      delete existing[job.job_id];
      fill(card, job);
      if (lastStates[job.job_id] && lastStates[job.job_id] !== job.state) {
        changes.push(job.filename + ": " + (stateText[job.state] || job.state));
      }
      lastStates[job.job_id] = job.state;
      list.insertBefore(card, before ? before : null);
      before = card;
    }
    Object.values(existing).forEach((c) => c.remove());
    empty.hidden = jobs.length > 0;
    const count = jobs.length + " job" + (jobs.length === 1 ? "" : "s") + ".";
    const text = changes.length ? count + " " + changes.join("; ") + "." : count;
    if (status.textContent !== text) status.textContent = text;  // a live region: only real changes
  }

  async function poll() {
    timer = null;
    try {
      const data = await Dub.api("GET", "/api/jobs?limit=30&owner=" + encodeURIComponent(userId), { timeoutMs: 20000 });
      Dub.showError(errBox, "");
      render(data.jobs);
    } catch (e) {
      if (e.status === 401) return Dub.toLogin();
      Dub.showError(errBox, "could not refresh the list: " + Dub.errorText(e) + " Trying again…");
    }
    schedule();
  }

  function schedule() {
    if (!timer && document.visibilityState === "visible") timer = setTimeout(poll, POLL_MS);
  }

  document.querySelectorAll(".job-card").forEach((c) => {
    const b = c.querySelector('[data-field="state"]');
    lastStates[c.dataset.jobId] = b ? b.dataset.state : "";
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !timer) poll();
  });
  schedule();
});
