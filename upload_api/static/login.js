/* Login form: POST /api/auth/login with fetch. The session cookie is HttpOnly and nothing is stored
   in the browser: every page gets the session's CSRF token in a meta tag rendered by the server. */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login-form");
  const err = document.getElementById("login-error");
  const submit = document.getElementById("login-submit");
  const next = form.dataset.next || "/ui";
  document.getElementById("username").focus();

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const username = form.username.value.trim();
    const password = form.password.value;
    if (!username || !password) {
      Dub.showError(err, "enter your user name and password.");
      (username ? form.password : form.username).focus();
      return;
    }
    Dub.showError(err, "");
    submit.disabled = true;
    submit.textContent = "Logging in…";
    try {
      await Dub.api("POST", "/api/auth/login", { body: { username, password }, timeoutMs: 30000 });
      location.assign(next);
    } catch (e) {
      // a refused login is not an ended session: show the server's reason as it is
      Dub.showError(err, e.kind === "http" ? e.detail + " (HTTP " + e.status + ")" : Dub.errorText(e));
      form.password.select();
      submit.disabled = false;
      submit.textContent = "Log in";
    }
  });
});
