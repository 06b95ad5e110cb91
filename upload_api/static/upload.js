/* Upload wizard: file → languages and voice → resumable upload through the chunk API.

   - POST /api/uploads/init, then PUT /api/uploads/{id}/chunk?index=N (X-Chunk-SHA256 of each chunk),
     then POST /api/uploads/{id}/complete; X-CSRF-Token on every unsafe request (Dub.api).
   - Progress is the server's: the status each chunk PUT answers (or GET /api/uploads/{id}).
   - Network errors and 5xx/408/429 are retried with backoff 1, 2, 4, 8, 16, 30, 30… s.
   - The upload id is kept in localStorage under the user, file name, size and lastModified; after a
     reload the user picks the same file again (checked with the first chunk's SHA-256) and the upload
     continues from next_missing. */
"use strict";

(function () {
  const CHUNK_TIMEOUT_MS = 120000;
  const BACKOFF_CAP_S = 30;
  const MAX_CHECKSUM_RETRIES = 3;
  const TYPES = { mp4: "video/mp4", m4v: "video/mp4", mkv: "video/x-matroska", mov: "video/quicktime",
                  webm: "video/webm", avi: "video/x-msvideo", mts: "video/mp2t", ts: "video/mp2t",
                  mpg: "video/mpeg", mpeg: "video/mpeg", ogv: "video/ogg", wav: "audio/wav", mp3: "audio/mpeg",
                  m4a: "audio/mp4", flac: "audio/flac", ogg: "audio/ogg", opus: "audio/ogg" };

  const $ = (id) => document.getElementById(id);
  const userId = document.body.dataset.userId;
  const PREFIX = "dub-upload:" + userId + ":";
  const langNames = Dub.bodyData("langNames", {});

  const s = {
    file: null, record: null, uploadId: null, chunkBytes: 0, totalChunks: 0, totalBytes: 0,
    receivedBytes: 0, running: false, paused: false, restart: false, failed: false, ctrl: null, samples: [], announced: -1, wakeLock: null,
  };

  class Stopped extends Error {}

  /* ---------------------------------------------------------------- SHA-256 */
  async function sha256hex(buf) {
    if (window.isSecureContext && window.crypto && crypto.subtle) {
      const d = await crypto.subtle.digest("SHA-256", buf);
      return hex(new Uint8Array(d));
    }
    return hex(sha256js(new Uint8Array(buf)));  // plain http on a LAN address: no crypto.subtle
  }

  function hex(bytes) {
    let out = "";
    for (let i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, "0");
    return out;
  }

  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);

  function sha256js(data) {
    const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c,
                               0x1f83d9ab, 0x5be0cd19]);
    const len = data.length, padded = new Uint8Array(((len + 9 + 63) >> 6) << 6);
    padded.set(data);
    padded[len] = 0x80;
    const view = new DataView(padded.buffer);
    view.setUint32(padded.length - 8, Math.floor(len / 0x20000000));
    view.setUint32(padded.length - 4, (len << 3) >>> 0);
    const w = new Uint32Array(64);
    for (let off = 0; off < padded.length; off += 64) {
      for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + i * 4);
      for (let i = 16; i < 64; i++) {
        const a = w[i - 15], b = w[i - 2];
        const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
        const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
        w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
      }
      let [A, B, C, D, E, F, G, H] = h;
      for (let i = 0; i < 64; i++) {
        const S1 = ((E >>> 6) | (E << 26)) ^ ((E >>> 11) | (E << 21)) ^ ((E >>> 25) | (E << 7));
        const t1 = (H + S1 + ((E & F) ^ (~E & G)) + K[i] + w[i]) | 0;
        const S0 = ((A >>> 2) | (A << 30)) ^ ((A >>> 13) | (A << 19)) ^ ((A >>> 22) | (A << 10));
        const t2 = (S0 + ((A & B) ^ (A & C) ^ (B & C))) | 0;
        H = G; G = F; F = E; E = (D + t1) | 0; D = C; C = B; B = A; A = (t1 + t2) | 0;
      }
      h[0] += A; h[1] += B; h[2] += C; h[3] += D; h[4] += E; h[5] += F; h[6] += G; h[7] += H;
    }
    const out = new Uint8Array(32);
    const ov = new DataView(out.buffer);
    for (let i = 0; i < 8; i++) ov.setUint32(i * 4, h[i]);
    return out;
  }

  /* ---------------------------------------------------------------- stored uploads */
  function keyOf(file) { return PREFIX + file.name + ":" + file.size + ":" + file.lastModified; }

  function storedRecords() {
    const out = [];
    try {
      for (let i = 0; i < localStorage.length; i++) {
        const k = localStorage.key(i);
        if (!k || !k.startsWith(PREFIX)) continue;
        try { out.push(Object.assign(JSON.parse(localStorage.getItem(k)), { key: k })); }
        catch (e) { localStorage.removeItem(k); }
      }
    } catch (e) { /* storage off: no resume after reload */ }
    return out;
  }

  function saveRecord(rec) {
    try { localStorage.setItem(rec.key, JSON.stringify(rec)); } catch (e) { /* storage off or full */ }
  }

  function dropRecord(rec) {
    if (!rec) return;
    try { localStorage.removeItem(rec.key); } catch (e) { /* ignore */ }
  }

  /* The stored upload for this file: same key, or (iOS gives a new lastModified to each pick) the same
     name and size; in both cases the first chunk's SHA-256 must match. */
  async function recordFor(file) {
    const recs = storedRecords();
    const rec = recs.find((r) => r.key === keyOf(file)) ||
      recs.find((r) => r.filename === file.name && r.size === file.size);
    if (!rec) return null;
    if (rec.first_sha) {
      const first = await file.slice(0, Math.min(file.size, rec.chunk_bytes)).arrayBuffer();
      if ((await sha256hex(first)) !== rec.first_sha) return null;
    }
    return rec;
  }

  async function listPending() {
    const box = $("pending"), list = $("pending-list"), tpl = $("pending-item");
    list.textContent = "";
    for (const rec of storedRecords()) {
      let st;
      try {
        st = await Dub.api("GET", "/api/uploads/" + encodeURIComponent(rec.upload_id), { timeoutMs: 15000 });
      } catch (e) {
        if (e.status === 404) dropRecord(rec);
        if (e.status === 401) return Dub.toLogin();
        continue;
      }
      if (st.state !== "receiving") { dropRecord(rec); continue; }
      const li = tpl.content.firstElementChild.cloneNode(true);
      li.querySelector('[data-field="text"]').textContent = rec.filename + ": " + Dub.bytes(st.received_bytes) +
        " of " + Dub.bytes(st.total_bytes) + " (" + Math.floor(st.progress * 100) + "%) on the server.";
      const btn = li.querySelector('[data-action="discard"]');
      btn.setAttribute("aria-label", "Discard the unfinished upload of " + rec.filename);
      btn.addEventListener("click", async () => {
        btn.disabled = true;
        try {
          await Dub.api("DELETE", "/api/uploads/" + encodeURIComponent(rec.upload_id));
        } catch (e) {
          if (e.status !== 404) { Dub.showError($("file-error"), "could not discard: " + Dub.errorText(e)); btn.disabled = false; return; }
        }
        dropRecord(rec);
        li.remove();
        box.hidden = list.children.length === 0;
      });
      list.appendChild(li);
    }
    box.hidden = list.children.length === 0;
  }

  /* ---------------------------------------------------------------- steps */
  function showStep(id) {
    for (const sec of document.querySelectorAll(".step")) sec.hidden = sec.id !== id;
    const h = document.querySelector("#" + id + " h2");
    if (h) h.focus();
  }

  function contentType(file) {
    if (file.type) return file.type;
    const ext = (file.name.split(".").pop() || "").toLowerCase();
    return TYPES[ext] || "application/octet-stream";
  }

  function choices() {
    const voice = $("voice").value, name = $("voice-name").value.trim();
    const options = { container: $("container").value, fit: $("fit").value };
    if (voice !== "auto") options.tts_engine = voice;
    return { source_lang: $("source-lang").value, target_lang: $("target-lang").value,
             voice: name || null, options };
  }

  /* Can this server run a job with these choices? Asked before uploading, so nobody uploads a big
     file for a language pair or voice that is not installed. null when it can (or when the server
     does not answer: it checks again when the upload completes). */
  async function readinessProblem(c) {
    const q = new URLSearchParams({ source_lang: c.source_lang, target_lang: c.target_lang,
                                    tts_engine: (c.options && c.options.tts_engine) || "auto" });
    if (c.voice) q.set("voice", c.voice);
    try {
      await Dub.api("GET", "/api/runtime/check?" + q.toString(), { timeoutMs: 15000 });
      return null;
    } catch (e) {
      if (e instanceof Dub.ApiError && e.status === 401) { Dub.toLogin(); return "your session has ended."; }
      if (e instanceof Dub.ApiError && (e.status === 422 || e.status === 507)) {
        return "this server cannot make this dub now: " + e.detail + ".";
      }
      return null;
    }
  }

  function applyChoices(rec) {
    if (!rec || !rec.choices) return;
    const c = rec.choices;
    $("source-lang").value = c.source_lang;
    $("target-lang").value = c.target_lang;
    $("voice").value = (c.options && c.options.tts_engine) || "auto";
    $("container").value = (c.options && c.options.container) || "auto";
    $("fit").value = (c.options && c.options.fit) || "review";
    $("voice-name").value = c.voice || "";
  }

  function summary() {
    const c = choices();
    $("upload-summary").textContent = s.file.name + " (" + Dub.bytes(s.file.size) + "), " +
      (langNames[c.source_lang] || c.source_lang) + " → " + (langNames[c.target_lang] || c.target_lang) + ".";
  }

  /* ---------------------------------------------------------------- progress */
  function announce(text) { $("upload-status").textContent = text; }

  function applyStatus(st) {
    if (!st) return;
    s.totalBytes = st.total_bytes;
    s.receivedBytes = st.received_bytes;
    const bar = $("upload-progress");
    bar.max = st.total_bytes || 1;
    bar.value = st.received_bytes;
    const pct = st.total_bytes ? Math.floor((st.received_bytes / st.total_bytes) * 100) : 0;
    const done = st.received.filter(Boolean).length;
    $("progress-text").textContent = Dub.bytes(st.received_bytes) + " of " + Dub.bytes(st.total_bytes) +
      " (" + pct + "%) · " + done + " of " + st.total_chunks + " parts on the server";
    const quarter = Math.floor(pct / 25);
    if (quarter !== s.announced && s.running && !s.paused) {
      s.announced = quarter;
      announce("Uploading: " + pct + "% on the server.");
    }
  }

  function sample(sentBytes) {
    const now = performance.now();
    s.samples.push([now, sentBytes]);
    while (s.samples.length > 2 && now - s.samples[0][0] > 10000) s.samples.shift();
    if (s.samples.length < 2) return;
    const [t0, b0] = s.samples[0];
    const speed = (sentBytes - b0) / ((now - t0) / 1000);
    if (!(speed > 0)) return;
    const left = (s.totalBytes - s.receivedBytes) / speed;
    $("speed-text").textContent = Dub.bytes(speed) + "/s · about " + eta(left) + " left";
  }

  function setButtons() {
    $("pause").hidden = !s.running || s.paused;
    // after a refusal without an upload on the server, resuming would only be refused again
    $("resume").hidden = !((!s.running || s.paused) && (s.uploadId || (s.file && !s.failed)));
    $("abort").hidden = !s.uploadId;
    $("another").hidden = s.running || !s.failed;
  }

  function eta(seconds) {
    return seconds < 60 ? Math.max(1, Math.round(seconds)) + " s" : Dub.duration(seconds);
  }

  /* ---------------------------------------------------------------- network */
  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => { clearTimeout(t); reject(new Stopped()); }, { once: true });
    });
  }

  /* Calls fn until it succeeds; transient failures wait 1, 2, 4… s (capped) and try again. */
  async function retrying(label, fn) {
    let attempt = 0, checksumFailures = 0;
    for (;;) {
      if (s.paused) throw new Stopped();
      try {
        const out = await fn(s.ctrl.signal);
        if (attempt > 0) announce("Connection is back: continuing.");
        Dub.showError($("upload-error"), "");
        return out;
      } catch (e) {
        if (s.paused || e instanceof Stopped || e.kind === "aborted") throw new Stopped();
        const badChecksum = e.status === 422 && /checksum/.test(e.detail || "");
        if (badChecksum && ++checksumFailures > MAX_CHECKSUM_RETRIES) throw e;
        if (!(e instanceof Dub.ApiError) || !(e.transient || badChecksum)) throw e;
        if (e.data && e.data.upload) applyStatus(e.data.upload);
        const wait = Math.min(BACKOFF_CAP_S, 2 ** attempt);
        attempt++;
        Dub.showError($("upload-error"), label + " failed: " + Dub.errorText(e) + " Retrying in " + wait +
          " s (attempt " + attempt + "). The upload continues by itself when the connection is back.");
        announce("Connection problem: retrying in " + wait + " s.");
        $("speed-text").textContent = "";
        s.samples = [];
        await sleep(wait * 1000, s.ctrl.signal);
      }
    }
  }

  async function putChunk(index, signal) {
    const start = index * s.chunkBytes, end = Math.min(s.file.size, start + s.chunkBytes);
    let buf;
    try {
      buf = await s.file.slice(start, end).arrayBuffer();
    } catch (e) {
      throw new Error("the file can no longer be read (was it moved or changed?). Pick it again to continue.");
    }
    const sha = await sha256hex(buf);
    return Dub.api("PUT", "/api/uploads/" + encodeURIComponent(s.uploadId) + "/chunk?index=" + index, {
      body: buf, signal, timeoutMs: CHUNK_TIMEOUT_MS,
      headers: { "Content-Type": "application/octet-stream", "X-Chunk-SHA256": sha },
    });
  }

  async function keepAwake(on) {
    try {
      if (on && !s.wakeLock && navigator.wakeLock) s.wakeLock = await navigator.wakeLock.request("screen");
      if (!on && s.wakeLock) { await s.wakeLock.release(); s.wakeLock = null; }
    } catch (e) { s.wakeLock = null; /* not allowed here: the hint says to keep the screen on */ }
  }

  async function run() {
    if (s.running) return;
    s.running = true;
    s.paused = false;
    s.failed = false;
    s.ctrl = new AbortController();
    s.samples = [];
    s.announced = -1;
    Dub.showError($("upload-error"), "");
    setButtons();
    keepAwake(true);
    let sent = 0;
    try {
      const c = choices();
      if (!s.uploadId) {
        announce("Starting the upload…");
        const init = await retrying("Starting the upload", (signal) => Dub.api("POST", "/api/uploads/init", {
          body: { filename: s.file.name, size_bytes: s.file.size, content_type: contentType(s.file) },
          signal, timeoutMs: 30000 }));
        s.uploadId = init.upload_id;
        s.chunkBytes = init.chunk_bytes;
        s.totalChunks = init.total_chunks;
        const first = await s.file.slice(0, Math.min(s.file.size, s.chunkBytes)).arrayBuffer();
        s.record = { key: keyOf(s.file), upload_id: s.uploadId, filename: s.file.name, size: s.file.size,
                     chunk_bytes: s.chunkBytes, total_chunks: s.totalChunks, first_sha: await sha256hex(first),
                     choices: c, saved_at: new Date().toISOString() };
        saveRecord(s.record);
        setButtons();
      } else if (s.record) {
        s.record.choices = c;
        saveRecord(s.record);
      }
      let st = await retrying("Checking the upload", (signal) =>
        Dub.api("GET", "/api/uploads/" + encodeURIComponent(s.uploadId), { signal, timeoutMs: 30000 }));
      applyStatus(st);
      announce(st.received_bytes ? "Continuing: " + Dub.bytes(st.received_bytes) + " already on the server." : "Uploading…");
      sample(0);
      for (;;) {
        if (s.paused) throw new Stopped();
        if (st.state === "complete" && st.job_id) return finished(st.job_id);
        if (st.state !== "receiving") throw new Error("this upload is " + st.state + ": start again with the file.");
        if (st.next_missing === null || st.next_missing === undefined) {
          announce("All parts are on the server: checking the file and creating the job…");
          const res = await retrying("Creating the job", (signal) => Dub.api("POST",
            "/api/uploads/" + encodeURIComponent(s.uploadId) + "/complete", { body: c, signal, timeoutMs: 120000 }));
          return finished(res.job_id);
        }
        const index = st.next_missing;
        st = await retrying("Sending part " + (index + 1) + " of " + st.total_chunks, (signal) => putChunk(index, signal));
        sent += Math.min(s.chunkBytes, s.file.size - index * s.chunkBytes);
        applyStatus(st);
        sample(sent);
      }
    } catch (e) {
      if (e instanceof Stopped) {
        announce("Paused. " + Dub.bytes(s.receivedBytes) + " of " + Dub.bytes(s.totalBytes || s.file.size) +
          " are on the server; press Resume to continue.");
        $("speed-text").textContent = "";
      } else {
        s.failed = true;
        if (e.data && e.data.upload) applyStatus(e.data.upload);
        if (!s.uploadId) {
          $("upload-progress").value = 0;
          $("progress-text").textContent = "Nothing was uploaded.";
        }
        if (e.status === 401) {
          Dub.showError($("upload-error"), Dub.errorText(e) + " Your upload is kept: log in, come back here and pick the same file.");
        } else if (e.status === 404 || (e.status === 410)) {
          dropRecord(s.record);
          s.uploadId = null;
          Dub.showError($("upload-error"), Dub.errorText(e) + " The upload is gone (expired or removed): press Resume to start it again.");
        } else {
          Dub.showError($("upload-error"), Dub.errorText(e));
        }
        announce("The upload stopped.");
        $("speed-text").textContent = "";
      }
    } finally {
      s.running = false;
      keepAwake(false);
      if (s.restart) {
        s.restart = false;
        run();
      } else {
        setButtons();
      }
    }
  }

  function resume() {
    if (s.running) {  // still stopping after Pause: start again as soon as it has stopped
      s.restart = true;
      return;
    }
    run();
  }

  function finished(jobId) {
    dropRecord(s.record);
    s.uploadId = null;
    $("upload-progress").value = $("upload-progress").max;
    announce("Upload complete. Opening the job…");
    location.assign("/ui/jobs/" + encodeURIComponent(jobId));
  }

  function pause() {
    if (!s.running) return;
    s.paused = true;
    if (s.ctrl) s.ctrl.abort();
    announce("Pausing…");
    setButtons();
  }

  async function abortUpload() {
    if (!s.uploadId || !confirm("Cancel this upload and remove what was sent?")) return;
    pause();
    try {
      await Dub.api("DELETE", "/api/uploads/" + encodeURIComponent(s.uploadId));
    } catch (e) {
      if (e.status !== 404) { Dub.showError($("upload-error"), "could not cancel: " + Dub.errorText(e)); return; }
    }
    dropRecord(s.record);
    Object.assign(s, { file: null, record: null, uploadId: null });
    $("file").value = "";
    $("to-langs").disabled = true;
    $("file-info").textContent = "The upload was cancelled.";
    showStep("step-file");
    listPending();
  }

  /* ---------------------------------------------------------------- file choice */
  async function onFile() {
    const file = $("file").files[0];
    Dub.showError($("file-error"), "");
    $("to-langs").disabled = true;
    Object.assign(s, { file: null, record: null, uploadId: null });
    if (!file) { $("file-info").textContent = ""; return; }
    if (file.size === 0) { Dub.showError($("file-error"), "this file is empty."); return; }
    s.file = file;
    $("file-info").textContent = file.name + ", " + Dub.bytes(file.size) + (file.type ? ", " + file.type : "") + ".";
    let rec = null;
    try { rec = await recordFor(file); } catch (e) { rec = null; }
    if (rec) {
      try {
        const st = await Dub.api("GET", "/api/uploads/" + encodeURIComponent(rec.upload_id), { timeoutMs: 15000 });
        if (st.state === "receiving" || (st.state === "complete" && st.job_id)) {
          s.record = Object.assign(rec, { key: keyOf(file) });
          s.uploadId = rec.upload_id;
          s.chunkBytes = st.chunk_bytes;
          s.totalChunks = st.total_chunks;
          saveRecord(s.record);
          applyChoices(rec);
          $("file-info").textContent = file.name + ": " + Dub.bytes(st.received_bytes) + " of " +
            Dub.bytes(st.total_bytes) + " are already on the server. Continuing from there.";
          showStep("step-upload");
          summary();
          applyStatus(st);
          run();
          return;
        }
        dropRecord(rec);
      } catch (e) {
        if (e.status === 401) return Dub.toLogin();
        if (e.status === 404) dropRecord(rec);
        else { Dub.showError($("file-error"), "could not check the earlier upload: " + Dub.errorText(e)); }
      }
    }
    $("to-langs").disabled = false;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const iOS = /iPad|iPhone|iPod/.test(navigator.userAgent) ||
      (navigator.platform === "MacIntel" && navigator.maxTouchPoints > 1);
    $("ios-hint").hidden = !iOS;
    $("file").addEventListener("change", onFile);
    $("to-langs").addEventListener("click", () => showStep("step-langs"));
    $("back-to-file").addEventListener("click", () => showStep("step-file"));
    $("start").addEventListener("click", async () => {
      const c = choices();
      if (c.source_lang === c.target_lang) {
        Dub.showError($("langs-error"), "the spoken language and the dub language are the same: pick another one.");
        $("target-lang").focus();
        return;
      }
      Dub.showError($("langs-error"), "");
      $("start").disabled = true;
      const why = await readinessProblem(c);
      $("start").disabled = false;
      if (why) {
        Dub.showError($("langs-error"), why);
        $("target-lang").focus();
        return;
      }
      showStep("step-upload");
      summary();
      run();
    });
    $("pause").addEventListener("click", () => { pause(); $("resume").focus(); });
    $("resume").addEventListener("click", () => { resume(); setTimeout(() => $("pause").focus(), 0); });
    $("abort").addEventListener("click", abortUpload);
    $("another").addEventListener("click", () => {
      Object.assign(s, { file: null, record: null, uploadId: null, failed: false });
      $("file").value = "";
      $("file-info").textContent = "";
      $("to-langs").disabled = true;
      Dub.showError($("upload-error"), "");
      announce("");
      showStep("step-file");
      listPending();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && s.running) keepAwake(true);
    });
    window.addEventListener("beforeunload", (ev) => {
      if (s.running) { ev.preventDefault(); ev.returnValue = ""; }
    });
    setButtons();
    listPending();
  });
})();
