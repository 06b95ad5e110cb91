/* Job page: the stage timeline and the list of runs with their own stages (polled from
   GET /api/jobs/{id}/timeline), the live log (Server-Sent Events from /api/jobs/{id}/logs/stream, resumed by
   the browser with Last-Event-ID), cancel and retry, downloads and a player once the job is done, the
   segment editor (GET/PUT /api/jobs/{id}/segments) with re-dub (POST /api/jobs/{id}/redub), and the pin
   (PUT /api/jobs/{id}/pin) that keeps a job from the retention policy. */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const $ = (id) => document.getElementById(id);
  const jobId = document.body.dataset.jobId;
  const stageLabels = Dub.bodyData("stageLabels", {});
  const stateText = Dub.bodyData("stateText", {});
  const langNames = Dub.bodyData("langNames", {});
  const FINISHED = new Set(["done", "failed", "cancelled", "expired", "needs_review"]);
  const EDITABLE_STATES = new Set(["done", "failed", "needs_review"]);
  const RUN_STATE = { QUEUED: "queued", NOT_STARTED: "queued", MANAGED: "queued", STARTING: "queued",
                      STARTED: "running", SUCCESS: "done", FAILURE: "failed", CANCELING: "cancelling",
                      CANCELED: "cancelled" };
  const KIND_TEXT = { run: "Dub", retry: "Retry", redub: "Re-dub", publish: "Published after review" };
  const AWAIT_RUN_MS = 120000;  // how long the page waits for the run request sensor to launch a re-dub
  const sourceLang = document.body.dataset.sourceLang;
  const targetLang = document.body.dataset.targetLang;
  const POLL_MS = 3000;
  const MAX_LOG_LINES = 1000;
  const base = "/api/jobs/" + encodeURIComponent(jobId);
  let state = document.body.dataset.state;
  let timer = null;
  let source = null;
  let outputsShown = !$("result").hidden;
  let runCount = $("runs").children.length;  // runs seen so far: a new one is a retry, re-dub or reprocess
  let awaiting = null;  // a requested re-dub the sensor has not launched yet: {runs, until}

  /* ------------------------------------------------------------ state and timeline */
  function announce(text) { $("job-status").textContent = text; }

  function currentStage(tl) {
    const busy = tl.stages.find((st) => st.state === "running" || st.state === "failed");
    return busy ? busy.label : "";
  }

  function setJobState(next, stageLabel) {
    Dub.setState(document.querySelector("#job-state .badge"), next, stateText);
    $("job-stage").textContent = stageLabel && next !== "done" ? "· " + stageLabel : "";
    $("cancel").hidden = FINISHED.has(next) || next === "cancelling";
    $("retry").hidden = !(next === "failed" || next === "cancelled");
    if (next !== state) {
      announce("The job is now " + (stateText[next] || next).toLowerCase() + ".");
      state = next;
      document.body.dataset.state = next;
      document.dispatchEvent(new CustomEvent("job:state", { detail: { state: next } }));  // quality.js
      if (next === "expired") showExpired();
      syncEditor(true);
    }
  }

  async function showExpired() {
    $("result").hidden = true;
    $("pin-box").hidden = true;
    $("expired-banner").hidden = false;
    try {
      const view = await Dub.api("GET", base, { timeoutMs: 20000 });
      if (view.expired_at) {
        const banner = $("expired-banner");
        banner.textContent = "The outputs of this job were deleted by the retention policy on "
          + new Date(view.expired_at).toLocaleString() + ": there is nothing left to play or download.";
      }
    } catch (e) { /* the banner without its date */ }
  }

  /* ------------------------------------------------------------ runs */
  function badge(value) {
    const b = document.createElement("span");
    Dub.setState(b, value, stateText);
    b.dataset.field = "state";
    return b;
  }

  function kindText(run) {
    if (run.kind === "reprocess") return run.reason ? "Reprocess: " + run.reason : "Reprocess";
    return KIND_TEXT[run.kind] || run.kind;
  }

  function renderRuns(runs) {
    const list = $("runs");
    list.textContent = "";
    for (const run of runs) {
      const li = document.createElement("li");
      li.className = "run";
      li.dataset.runId = run.run_id;
      li.dataset.kind = run.kind;
      const head = document.createElement("div");
      head.className = "run-head";
      const name = document.createElement("span");
      name.className = "run-name";
      name.dataset.field = "kind";
      name.textContent = kindText(run);
      head.append(name, " ", badge(RUN_STATE[run.status] || String(run.status).toLowerCase()));
      if (run.resumed && run.resumed.length) {
        const res = document.createElement("span");
        res.className = "muted small";
        res.textContent = "resumed " + run.resumed.length + "×";
        head.append(" ", res);
      }
      li.appendChild(head);
      const stages = document.createElement("ul");
      stages.className = "run-stages";
      for (const st of run.stages || []) {
        const item = document.createElement("li");
        item.dataset.stage = st.stage;
        const label = document.createElement("span");
        label.className = "stage-name";
        label.textContent = st.label || stageLabels[st.stage] || st.stage;
        const dur = document.createElement("span");
        dur.className = "muted";
        dur.dataset.field = "duration";
        dur.textContent = Dub.duration(st.duration_s);
        item.append(label, " ", badge(st.state), " ", dur);
        stages.appendChild(item);
      }
      li.appendChild(stages);
      list.appendChild(li);
    }
    $("runs-panel").hidden = !runs.length;
  }

  /* A run this page has not seen yet (a re-dub the sensor launched, a retry, a scheduled reprocess): its
     log and, once it is done, its outputs replace the previous ones. */
  function noticeRuns(runs) {
    if (runs.length <= runCount) return false;
    const newest = runs[runs.length - 1];
    runCount = runs.length;
    awaiting = null;
    outputsShown = false;
    if (!source) {  // the previous run's log stream has ended: follow the new run
      const sep = document.createElement("li");
      sep.className = "log-line log-sep";
      sep.textContent = "— " + kindText(newest).toLowerCase() + " —";
      $("log").appendChild(sep);
      openLog();
    }
    return true;
  }

  function renderTimeline(tl) {
    const q = tl.queue;
    $("queue").dataset.state = q.state;
    $("queue-wait").textContent = q.duration_s !== null && q.duration_s !== undefined ? Dub.duration(q.duration_s)
      : (q.state === "running" ? "still waiting" : "—");
    for (const st of tl.stages) {
      const li = document.querySelector('#timeline li[data-stage="' + CSS.escape(st.stage) + '"]');
      if (!li) continue;
      Dub.setState(li.querySelector('[data-field="state"]'), st.state, stateText);
      li.querySelector('[data-field="duration"]').textContent = Dub.duration(st.duration_s);
      li.querySelector('[data-field="attempts"]').textContent = st.attempts > 1 ? "attempts: " + st.attempts : "";
      li.querySelector('[data-field="meta"]').textContent = Object.entries(st.metadata || {})
        .map(([k, v]) => k.replace(/_/g, " ") + ": " + v).join(" · ");
      const err = li.querySelector('[data-field="error"]');
      err.textContent = st.error ? "Error: " + st.error : "";
      err.hidden = !st.error;
    }
    $("run-wall").textContent = tl.run_wall_s ? "Total run time: " + Dub.duration(tl.run_wall_s) : "";
    let fresh = false;
    if (Array.isArray(tl.runs)) {
      renderRuns(tl.runs);
      fresh = noticeRuns(tl.runs);
    }
    const before = state;
    setJobState(tl.state, currentStage(tl));
    if (fresh && before === state) syncEditor(true);  // a whole new run between two polls
  }

  function outputUrl(name) { return base + "/outputs/" + encodeURIComponent(name); }

  function renderOutputs(outputs, version) {
    if (!outputs || !outputs.length || outputsShown || state === "expired") return;
    outputsShown = true;
    const old = $("player");
    if (old && version) {  // a re-dub or reprocess replaced the files: a new player for the new ones
      old.removeAttribute("src");
      old.load();
      old.remove();
    }
    const v = old && version ? "?v=" + encodeURIComponent(version) : "";  // the first player needs none
    const list = $("outputs");
    list.textContent = "";
    const videoFirst = (n) => (/\.(mkv|mp4)$/.test(n) ? 0 : 1);
    outputs = outputs.slice().sort((a, b) => videoFirst(a) - videoFirst(b) || a.localeCompare(b));
    for (const name of outputs) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.className = "btn";
      a.href = outputUrl(name);
      a.setAttribute("download", "");
      a.textContent = "Download " + name;
      li.appendChild(a);
      list.appendChild(li);
    }
    const playable = outputs.filter((n) => n.endsWith(".mp4")).concat(outputs.filter((n) => n.endsWith(".mkv")));
    if (playable.length && !$("player")) {
      const video = document.createElement("video");
      video.id = "player";
      video.controls = true;
      video.preload = "metadata";
      video.setAttribute("playsinline", "");
      video.src = outputUrl(playable[0]) + v;
      for (const vtt of outputs.filter((n) => n.endsWith(".vtt"))) {
        const track = document.createElement("track");
        track.kind = "subtitles";
        track.src = outputUrl(vtt) + v;
        const code = vtt.slice(0, -4).split(".").pop();
        track.srclang = code;
        track.label = langNames[code] || code;
        video.appendChild(track);
      }
      $("player-box").appendChild(video);
    }
    $("result").hidden = false;
    announce("The job is done: the dubbed video is ready to play and download.");
  }

  async function refresh() {
    timer = null;
    try {
      const tl = await Dub.api("GET", base + "/timeline", { timeoutMs: 20000 });
      renderTimeline(tl);
      if (tl.state === "done" && !outputsShown) {
        const view = await Dub.api("GET", base, { timeoutMs: 20000 });
        renderOutputs(view.outputs, view.run_id);
      }
      Dub.showError($("job-error"), "");
      if (awaiting && Date.now() > awaiting.until) {
        awaiting = null;
        editorStatus("The re-dub has not started yet: the server queues it; reload this page later to see it.");
        syncEditor(false);
      }
    } catch (e) {
      if (e.status === 401) return Dub.toLogin();
      Dub.showError($("job-error"), "could not refresh the job: " + Dub.errorText(e) + " Trying again…");
    }
    if (!FINISHED.has(state) || awaiting) schedule();
  }

  function schedule() {
    if (!timer) timer = setTimeout(refresh, POLL_MS);
  }

  /* ------------------------------------------------------------ live log */
  function addLine(line) {
    const log = $("log");
    const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const li = document.createElement("li");
    li.className = "log-line level-" + (line.level || "info");
    const time = document.createElement("time");
    if (line.time) {
      time.setAttribute("datetime", line.time);
      time.textContent = new Date(line.time).toLocaleTimeString();
    }
    li.appendChild(time);
    if (line.stage) {
      const stage = document.createElement("span");
      stage.className = "log-stage";
      stage.textContent = stageLabels[line.stage] || line.stage;
      li.appendChild(stage);
    }
    const msg = document.createElement("span");
    msg.className = "log-msg";
    const level = line.level === "error" || line.level === "critical" ? "Error: "
      : (line.level === "warning" ? "Warning: " : "");
    msg.textContent = level + (line.message || line.event || "");
    li.appendChild(msg);
    log.appendChild(li);
    while (log.children.length > MAX_LOG_LINES) log.firstElementChild.remove();
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function openLog() {
    if (source) source.close();
    $("log-status").textContent = "Connecting…";
    source = new EventSource(base + "/logs/stream");
    source.addEventListener("open", () => {
      $("log-status").textContent = FINISHED.has(state) ? "Loading the log…" : "Live: new lines appear as the job runs.";
    });
    source.addEventListener("log", (ev) => {
      try { addLine(JSON.parse(ev.data)); } catch (e) { /* a malformed line is skipped */ }
    });
    source.addEventListener("end", (ev) => {
      source.close();
      source = null;
      let end = {};
      try { end = JSON.parse(ev.data); } catch (e) { /* ignore */ }
      $("log-status").textContent = "The run has finished (" + (stateText[end.state] || end.state || "") + ").";
      if (timer) { clearTimeout(timer); timer = null; }
      refresh();
    });
    source.addEventListener("error", () => {
      if (!source) return;
      if (source.readyState === EventSource.CLOSED) {
        $("log-status").textContent = "The live log stopped. Trying again in 5 s…";
        source = null;
        setTimeout(() => { if (!source) openLog(); }, 5000);
      } else {
        $("log-status").textContent = "Connection to the live log lost: reconnecting…";
      }
    });
  }

  /* ------------------------------------------------------------ segment editor */
  const ed = { data: null, busy: false, gone: false };

  function editorStatus(text) { $("editor-status").textContent = text; }

  function clock(t) {  // m:ss.s
    const tenths = Math.max(0, Math.round(Number(t) * 10));
    return Math.floor(tenths / 600) + ":" + ((tenths % 600) / 10).toFixed(1).padStart(4, "0");
  }

  function num(t) { return String(Math.round(Number(t) * 100) / 100); }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function field(li, key) { return li.querySelector('[data-key="' + key + '"]'); }

  function segmentCard(seg, index, data) {
    const id = "seg-" + seg.id;
    const li = el("li", "card segment");
    li.dataset.segmentId = seg.id;
    li.setAttribute("aria-labelledby", id + "-title");
    const head = el("div", "segment-head");
    // numbered by id, as the server's messages name them ("segment 3: end: overlaps segment 4")
    const title = el("h3", "segment-time", "Segment " + seg.id + " · " + clock(seg.start) + " – " + clock(seg.end));
    title.id = id + "-title";
    const edited = el("span", "badge mark-edited", "Edited");
    edited.dataset.field = "edited";
    edited.hidden = !seg.edited;
    const unsaved = el("span", "badge mark-unsaved", "Not saved");
    unsaved.dataset.field = "unsaved";
    unsaved.hidden = true;
    head.append(title, edited, unsaved);
    li.appendChild(head);
    const error = el("p", "error small");  // under the heading: seen before the fields it is about
    error.id = id + "-error";
    error.dataset.field = "error";
    error.hidden = true;
    li.appendChild(error);

    function textField(key, label, value) {
      const box = el("div", "field");
      const lab = el("label", "", label);
      lab.htmlFor = id + "-" + key;
      const area = el("textarea");
      area.id = id + "-" + key;
      area.dataset.key = key;
      area.rows = 3;
      area.maxLength = data.limits && data.limits.max_text_chars ? data.limits.max_text_chars : 2000;
      area.value = value || "";
      area.dataset.orig = area.value;
      area.setAttribute("aria-describedby", error.id);
      if (key === "text") area.lang = targetLang;
      if (key === "source_text") area.lang = sourceLang;
      box.append(lab, area);
      return box;
    }
    li.appendChild(textField("source_text", "Original (" + (langNames[data.source_lang] || data.source_lang) + ")",
                             seg.source_text));
    li.appendChild(textField("text", "Translation (" + (langNames[data.target_lang] || data.target_lang) + ")",
                             seg.text));

    const more = el("details", "segment-more");
    more.appendChild(el("summary", "", "Timing and voice"));
    const grid = el("div", "grid2");
    for (const [key, label] of [["start", "Starts at (seconds)"], ["end", "Ends at (seconds)"]]) {
      const box = el("div", "field");
      const lab = el("label", "", label);
      lab.htmlFor = id + "-" + key;
      const input = el("input");
      input.type = "number";
      input.inputMode = "decimal";
      input.step = "0.01";
      input.min = "0";
      if (data.duration_s) input.max = String(data.duration_s);
      input.id = id + "-" + key;
      input.dataset.key = key;
      input.value = num(seg[key]);
      input.dataset.orig = input.value;
      input.setAttribute("aria-describedby", error.id);
      box.append(lab, input);
      grid.appendChild(box);
    }
    more.appendChild(grid);
    if (data.voices && data.voices.length) {
      const box = el("div", "field");
      const lab = el("label", "", "Voice");
      lab.htmlFor = id + "-voice";
      const select = el("select");
      select.id = id + "-voice";
      select.dataset.key = "voice";
      select.appendChild(new Option("The job's voice" + (data.voice ? " (" + data.voice + ")" : ""), ""));
      for (const v of data.voices) select.appendChild(new Option(v, v));
      if (seg.voice && !data.voices.includes(seg.voice)) select.appendChild(new Option(seg.voice, seg.voice));
      select.value = seg.voice || "";
      select.dataset.orig = select.value;
      select.setAttribute("aria-describedby", error.id);
      box.append(lab, select);
      more.appendChild(box);
    }
    if (seg.start !== undefined) li.appendChild(more);
    return li;
  }

  /* The changed fields of one card: {} when nothing changed. */
  function changesOf(li) {
    const out = {};
    for (const input of li.querySelectorAll("[data-key]")) {
      if (input.value === input.dataset.orig) continue;
      const key = input.dataset.key;
      if (key === "start" || key === "end") out[key] = input.value === "" ? NaN : Number(input.value);
      else if (key === "voice") out[key] = input.value || null;
      else out[key] = input.value;
    }
    return out;
  }

  function collectChanges() {
    const out = [];
    for (const li of $("segments").children) {
      const changed = changesOf(li);
      if (Object.keys(changed).length) out.push(Object.assign({ id: Number(li.dataset.segmentId) }, changed));
    }
    return out;
  }

  function dirty() { return collectChanges().length > 0; }

  function markUnsaved(li) {
    li.querySelector('[data-field="unsaved"]').hidden = !Object.keys(changesOf(li)).length;
  }

  function clearErrors() {
    Dub.showError($("editor-error"), "");
    for (const e of $("segments").querySelectorAll('[data-field="error"]')) { e.textContent = ""; e.hidden = true; }
    for (const e of $("segments").querySelectorAll('[aria-invalid="true"]')) e.removeAttribute("aria-invalid");
  }

  function runActive() { return !FINISHED.has(state) || awaiting !== null; }

  /* Enable or disable the editor for the job's state; load the segments when `load` and the job has
     just finished (or the page just opened on a finished job). */
  function syncEditor(load) {
    if (state === "expired") {
      $("editor").hidden = true;
      return;
    }
    const active = runActive();
    $("editor-busy").hidden = !active || !ed.data;
    const locked = active || ed.gone || !ed.data || !ed.data.editable;
    $("editor-fields").disabled = locked;
    for (const button of [$("save-segments"), $("redub")]) {
      button.disabled = locked;
      // while a save or request is on its way the button keeps the keyboard focus: aria-disabled only
      if (ed.busy && !locked) button.setAttribute("aria-disabled", "true");
      else button.removeAttribute("aria-disabled");
    }
    if (load && !active && EDITABLE_STATES.has(state)) loadSegments(false);
  }

  function showGone() {
    ed.gone = true;
    ed.data = null;
    $("segments").textContent = "";
    $("editor").hidden = false;
    $("editor-gone").hidden = false;
    $("editor-form").hidden = true;
    $("editor-intro").hidden = true;
    $("editor-reload-box").hidden = true;
    Dub.showError($("editor-error"), "");
    syncEditor(false);
  }

  function renderSegments(data, keep) {
    ed.data = data;
    const list = $("segments");
    list.textContent = "";
    data.segments.forEach((seg, i) => list.appendChild(segmentCard(seg, i, data)));
    if (keep) {  // the user's unsaved values, on top of the newer version
      for (const change of keep) {
        const li = list.querySelector('li[data-segment-id="' + change.id + '"]');
        if (!li) continue;
        for (const [key, value] of Object.entries(change)) {
          const input = field(li, key);
          if (input && key !== "id") input.value = value === null ? "" : String(value);
        }
        markUnsaved(li);
      }
    }
    $("editor").hidden = false;
    $("editor-form").hidden = false;
    $("editor-intro").hidden = false;
    $("editor-gone").hidden = true;
    $("editor-reload-box").hidden = true;
    if (!data.editable) editorStatus(data.reason || "These lines can not be edited now.");
    syncEditor(false);
  }

  async function loadSegments(keepEdits) {
    const keep = keepEdits ? collectChanges() : null;
    let data;
    try {
      data = await Dub.api("GET", base + "/segments", { timeoutMs: 20000 });
    } catch (e) {
      if (e.status === 401) return Dub.toLogin();
      if (e.status === 410) return showGone();
      if (e.status === 404 || e.status === 405 || e.status === 409) {
        // no translation to edit (the job failed before it), or a run has just started
        if (!ed.data) $("editor").hidden = true;
        else editorStatus(e.detail);
        return;
      }
      $("editor").hidden = false;
      Dub.showError($("editor-error"), "could not load the lines: " + Dub.errorText(e));
      return;
    }
    renderSegments(data, keep);
  }

  /* Put each 422 complaint next to its segment (and field) when it names one; the rest at the top. */
  const FIELD_TEXT = { text: "Translation", source_text: "Original", start: "Start", end: "End", voice: "Voice" };

  function showInvalid(err, sent) {
    // {"detail": "...", "problems": [{id, field, message}]} from the edit checks; pydantic's list of
    // {loc: ["body", "segments", i, field], msg} for a malformed request; or a plain string
    const data = err.data || {};
    const detail = data.detail !== undefined ? data.detail : err.detail;
    const items = Array.isArray(data.problems) && data.problems.length ? data.problems
      : (Array.isArray(detail) ? detail : [detail]);
    const general = [];
    let first = null;
    for (const d of items) {
      const msg = typeof d === "string" ? d : (d && (d.msg || d.message)) || JSON.stringify(d);
      let id = null, key = null;
      if (d && typeof d === "object") {
        const loc = Array.isArray(d.loc) ? d.loc : [];
        const at = loc.indexOf("segments");
        if (at >= 0 && typeof loc[at + 1] === "number" && sent[loc[at + 1]]) {
          id = sent[loc[at + 1]].id;
          key = loc[at + 2] || null;
        }
        if (d.id !== undefined || d.segment_id !== undefined) id = d.segment_id !== undefined ? d.segment_id : d.id;
        if (d.field) key = d.field;
      }
      if (id === null) {
        const m = /segment\s+(?:id\s*)?#?(\d+)/i.exec(msg);
        if (m) id = Number(m[1]);
      }
      if (key === null) {
        const m = /\b(source_text|text|start|end|voice)\b/.exec(msg);
        if (m) key = m[1];
      }
      const li = id === null ? null : $("segments").querySelector('li[data-segment-id="' + id + '"]');
      if (!li) { general.push(id === null ? msg : "segment " + id + ": " + msg); continue; }
      const box = li.querySelector('[data-field="error"]');
      const what = FIELD_TEXT[key] && !msg.startsWith(key + ":") ? FIELD_TEXT[key] + ": " : "";
      box.textContent = (box.textContent ? box.textContent + " " : "Error: ") + what + msg;
      box.hidden = false;
      const input = key ? field(li, key) : null;
      if (input) {
        input.setAttribute("aria-invalid", "true");
        if (key === "start" || key === "end" || key === "voice") li.querySelector("details").open = true;
      }
      if (!first) first = input || li.querySelector("textarea");
    }
    const where = first ? "see the marked line" + (items.length - general.length > 1 ? "s" : "") : "";
    Dub.showError($("editor-error"), "your changes were not saved: "
      + [general.join("; "), where].filter(Boolean).join("; ") + " (HTTP 422)");
    if (first) {  // the field gets the focus; its message is scrolled into view with it where both fit
      first.focus({ preventScroll: true });
      first.closest("li.segment").querySelector('[data-field="error"]').scrollIntoView({ block: "nearest" });
      first.scrollIntoView({ block: "nearest" });
    } else {
      $("editor-error").scrollIntoView({ block: "nearest" });
    }
  }

  async function saveSegments() {
    if (ed.busy || !ed.data) return false;
    clearErrors();
    const changes = collectChanges();
    if (!changes.length) {
      editorStatus("Nothing to save: no line was changed.");
      return true;
    }
    ed.busy = true;
    syncEditor(false);
    editorStatus("Saving " + changes.length + " changed line" + (changes.length > 1 ? "s" : "") + "…");
    try {
      const data = await Dub.api("PUT", base + "/segments",
                                 { body: { revision: ed.data.revision, segments: changes }, timeoutMs: 30000 });
      ed.busy = false;
      renderSegments(data, null);
      editorStatus("Saved " + changes.length + " changed line" + (changes.length > 1 ? "s" : "")
                   + ". Press Re-dub to hear them in the video.");
      return true;
    } catch (e) {
      ed.busy = false;
      if (e.status === 401) { Dub.toLogin(); return false; }
      if (e.status === 410) { showGone(); return false; }
      editorStatus("Not saved: your changes are still here.");
      if (e.status === 422) showInvalid(e, changes);
      else Dub.showError($("editor-error"), "your changes were not saved: " + Dub.errorText(e));
      if (e.status === 409) {  // the message is at the top of the editor, far above on a phone
        $("editor-reload-box").hidden = false;
        $("editor-reload").focus();
      } else if (e.status !== 422) {
        $("editor-error").scrollIntoView({ block: "nearest" });
      }
      return false;
    } finally {
      ed.busy = false;
      syncEditor(false);
    }
  }

  async function requestRedub() {
    if (ed.busy || runActive() || !ed.data) return;
    if (dirty() && !(await saveSegments())) return;
    clearErrors();
    ed.busy = true;
    syncEditor(false);
    editorStatus("Asking for a re-dub…");
    try {
      const r = await Dub.api("POST", base + "/redub", { timeoutMs: 30000 });
      // queued: false: this revision was asked for before (its run is under Runs); nothing new to wait for
      if (r.queued) awaiting = { runs: runCount, until: Date.now() + AWAIT_RUN_MS };
      editorStatus(r.queued ? "Re-dub requested: the new run starts in a few seconds; follow it under Runs."
        : "These edits were already sent for re-dubbing (see Runs): change a line and save to re-dub again.");
    } catch (e) {
      if (e.status === 401) return Dub.toLogin();
      if (e.status === 410) showGone();
      else Dub.showError($("editor-error"), "could not re-dub: " + Dub.errorText(e));
      editorStatus("");
    } finally {
      ed.busy = false;
      syncEditor(false);
    }
    if (awaiting) {
      if (timer) { clearTimeout(timer); timer = null; }
      schedule();
    }
  }

  $("segments").addEventListener("input", (ev) => {
    const li = ev.target.closest("li.segment");
    if (li) markUnsaved(li);
  });
  $("editor-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!$("save-segments").disabled && !ed.busy) saveSegments();
  });
  $("redub").addEventListener("click", requestRedub);
  // quality.js asked for a run ("Publish anyway"): follow the job until it starts, as after a re-dub
  document.addEventListener("job:awaitRun", () => {
    awaiting = { runs: runCount, until: Date.now() + AWAIT_RUN_MS };
    syncEditor(false);
    if (timer) { clearTimeout(timer); timer = null; }
    schedule();
  });
  $("editor-reload").addEventListener("click", async () => {
    clearErrors();
    await loadSegments(true);
    editorStatus("Loaded the latest version; your unsaved changes are kept. Save them again.");
  });
  window.addEventListener("beforeunload", (ev) => {
    if (ed.data && dirty()) { ev.preventDefault(); ev.returnValue = ""; }
  });

  /* ------------------------------------------------------------ pin */
  /* a toggle button (aria-pressed): a 44 px target, the same as every other button */
  let pinning = Promise.resolve();
  const pinned = () => $("pin").getAttribute("aria-pressed") === "true";
  const setPinned = (on) => $("pin").setAttribute("aria-pressed", on ? "true" : "false");
  $("pin").addEventListener("click", () => {
    const want = !pinned();
    setPinned(want);
    pinning = pinning.then(async () => {
      try {
        const r = await Dub.api("PUT", base + "/pin", { body: { pinned: want }, timeoutMs: 20000 });
        setPinned(!!r.pinned);
        $("pin-status").textContent = r.pinned ? "The retention policy never deletes this job's files."
          : "Not kept: the retention policy deletes this job's files when they are old enough.";
      } catch (e) {
        if (e.status === 401) return Dub.toLogin();
        setPinned(!want);
        $("pin-status").textContent = "Error: could not change this: " + Dub.errorText(e);
      }
    });
  });

  /* ------------------------------------------------------------ actions */
  async function act(button, what) {
    button.disabled = true;
    Dub.showError($("job-error"), "");
    try {
      if (what === "cancel") {
        const r = await Dub.api("POST", base + "/cancel", { timeoutMs: 30000 });
        announce("Cancel requested: the job is " + (stateText[r.state] || r.state).toLowerCase() + ".");
      } else {
        await Dub.api("POST", base + "/retry", { timeoutMs: 30000 });
        announce("Retrying: a new run has started.");
        const sep = document.createElement("li");
        sep.className = "log-line log-sep";
        sep.textContent = "— retry —";
        $("log").appendChild(sep);
        outputsShown = false;
        openLog();
      }
    } catch (e) {
      if (e.status === 401) return Dub.toLogin();
      Dub.showError($("job-error"), "could not " + what + ": " + Dub.errorText(e));
    } finally {
      button.disabled = false;
    }
    if (timer) { clearTimeout(timer); timer = null; }
    state = "";  // refresh announces the new state
    refresh();
  }

  $("cancel").addEventListener("click", () => {
    if (confirm("Cancel this job? Its partial results are removed.")) act($("cancel"), "cancel");
  });
  $("retry").addEventListener("click", () => act($("retry"), "retry"));

  openLog();
  syncEditor(true);
  refresh();
});
