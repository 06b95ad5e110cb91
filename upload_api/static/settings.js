/* Settings page: the user's push notification settings. The form is filled by the server; Save sends
   PUT /api/settings and shows the server's reason when it refuses (422); "Send test notification"
   calls POST /api/settings/test-notification (after saving unsaved changes, so the test goes where the
   form says). Text from the server is only put into the page with textContent. */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const $ = (id) => document.getElementById(id);
  const form = $("notify-form");
  const saveBtn = $("save");
  const testBtn = $("test");
  const topic = $("topic");
  const FIELDS = ["enabled", "on_success", "on_failure", "on_cancel"];
  let saved = snapshot();
  let busy = false;

  function values() {
    const out = { topic: topic.value.trim() || null, priority: parseInt($("priority").value, 10) };
    for (const name of FIELDS) out[name] = $(name).checked;
    return out;
  }

  function snapshot() { return JSON.stringify(values()); }
  function dirty() { return snapshot() !== saved; }

  /* The server's reason, without pydantic's "Value error, " prefix. */
  function reason(err) { return Dub.errorText(err).replace(/Value error, /g, ""); }

  function setStatus(id, text) { $(id).textContent = text || ""; }

  /* Put the settings the server answered with into the form and the subscribe hint. */
  function apply(view) {
    const n = view.notifications;
    $("enabled").checked = !!n.enabled;
    topic.value = n.topic || "";
    topic.placeholder = n.default_topic;
    $("priority").value = String(n.priority);
    for (const name of FIELDS.slice(1)) $(name).checked = !!n[name];
    const sub = $("subscribe-topic");
    if (sub) sub.textContent = n.effective_topic;
    topic.removeAttribute("aria-invalid");
    saved = snapshot();
  }

  function setBusy(on) {
    busy = on;
    saveBtn.disabled = on;
    if (testBtn.dataset.unavailable !== "1") testBtn.disabled = on;
  }
  if (testBtn.disabled) testBtn.dataset.unavailable = "1";  // the server has no NTFY_URL

  async function save() {
    Dub.showError($("settings-error"), "");
    setStatus("settings-status", "Saving…");
    try {
      const view = await Dub.api("PUT", "/api/settings", { body: { notifications: values() }, timeoutMs: 30000 });
      apply(view);
      const n = view.notifications;
      setStatus("settings-status", n.enabled
        ? "Saved. Notifications go to the topic " + n.effective_topic + "."
        : "Saved. Notifications are off.");
      return true;
    } catch (e) {
      setStatus("settings-status", "Not saved.");
      Dub.showError($("settings-error"), reason(e));
      if (e.kind === "http" && e.status === 422 && /topic/.test(e.detail || "")) {
        topic.setAttribute("aria-invalid", "true");
        topic.focus();
      }
      return false;
    }
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (busy) return;
    setBusy(true);
    try { await save(); } finally { setBusy(false); }
  });

  function edited(ev) {
    if (busy) return;
    if (ev.target === topic) topic.removeAttribute("aria-invalid");
    const changed = dirty();
    if (!changed) Dub.showError($("settings-error"), "");  // back to what is saved
    setStatus("settings-status", changed ? "You have unsaved changes." : "");
  }
  form.addEventListener("input", edited);
  form.addEventListener("change", edited);

  testBtn.addEventListener("click", async () => {
    if (busy) return;
    setBusy(true);
    Dub.showError($("test-error"), "");
    setStatus("test-status", "");
    try {
      if (dirty() && !(await save())) {
        Dub.showError($("test-error"), "save your settings first: the test goes to the saved topic.");
        return;
      }
      setStatus("test-status", "Sending…");
      const res = await Dub.api("POST", "/api/settings/test-notification", { timeoutMs: 30000 });
      setStatus("test-status", "Delivered to the topic " + res.topic + ". It should show up in the ntfy app now.");
    } catch (e) {
      setStatus("test-status", "");
      Dub.showError($("test-error"), reason(e));
    } finally {
      setBusy(false);
    }
  });
});
