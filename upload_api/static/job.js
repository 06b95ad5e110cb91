/* Job page: the stage timeline (polled from GET /api/jobs/{id}/timeline), the live log (Server-Sent
   Events from /api/jobs/{id}/logs/stream, resumed by the browser with Last-Event-ID), cancel and retry,
   downloads and a player once the job is done. */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const $ = (id) => document.getElementById(id);
  const jobId = document.body.dataset.jobId;
  const stageLabels = Dub.bodyData("stageLabels", {});
  const stateText = Dub.bodyData("stateText", {});
  const langNames = Dub.bodyData("langNames", {});
  const FINISHED = new Set(["done", "failed", "cancelled"]);
  const POLL_MS = 3000;
  const MAX_LOG_LINES = 1000;
  const base = "/api/jobs/" + encodeURIComponent(jobId);
  let state = document.body.dataset.state;
  let timer = null;
  let source = null;
  let outputsShown = !$("result").hidden;

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
    }
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
    setJobState(tl.state, currentStage(tl));
  }

  function outputUrl(name) { return base + "/outputs/" + encodeURIComponent(name); }

  function renderOutputs(outputs) {
    if (!outputs || !outputs.length || outputsShown) return;
    outputsShown = true;
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
      video.src = outputUrl(playable[0]);
      for (const vtt of outputs.filter((n) => n.endsWith(".vtt"))) {
        const track = document.createElement("track");
        track.kind = "subtitles";
        track.src = outputUrl(vtt);
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
        renderOutputs(view.outputs);
      }
      Dub.showError($("job-error"), "");
    } catch (e) {
      if (e.status === 401) return Dub.toLogin();
      Dub.showError($("job-error"), "could not refresh the job: " + Dub.errorText(e) + " Trying again…");
    }
    if (!FINISHED.has(state)) schedule();
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
  refresh();
});
