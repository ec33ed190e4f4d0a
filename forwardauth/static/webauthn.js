// forwardauth: the browser side of passkeys and security keys (WebAuthn).
//
// Served from /oauth2/static/ (the pages' Content-Security-Policy allows
// scripts from 'self' only: nothing inline). Elements opt in with
// data-webauthn="register" | "step-up" | "sign-in" and say where to fetch the
// options (data-options) and where to post the answer (data-answer). Every
// request carries the page's CSRF token (data-csrf). The server answers
// {redirect: URL} or {error: "message"}; the message is shown in the
// element's [data-webauthn-error] (or the page's).
//
// A sign-in form with an <input autocomplete="username webauthn"> also gets
// conditional UI: the browser offers the user's passkeys in the name field's
// autofill, without a click on "Sign in with a passkey".
(function () {
  "use strict";

  if (!window.PublicKeyCredential || !PublicKeyCredential.parseCreationOptionsFromJSON) {
    document.querySelectorAll("[data-webauthn]").forEach(function (el) { el.hidden = true; });
    document.querySelectorAll("[data-webauthn-unsupported]").forEach(function (el) { el.hidden = false; });
    return;
  }

  var pending = null; // the AbortController of a conditional request, if one waits

  function errorBox(el) {
    return el.querySelector("[data-webauthn-error]") || document.querySelector("[data-webauthn-error]");
  }

  function show(el, message) {
    var box = errorBox(el);
    if (box) { box.textContent = message; box.hidden = !message; }
  }

  function post(url, csrf, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin", redirect: "error",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify(Object.assign({csrf: csrf}, body))
    }).then(function (r) {
      return r.json().catch(function () { return {error: "Unexpected answer (" + r.status + ")."}; });
    });
  }

  // What the user reads when the browser gives up: no answer reaches the server.
  function browserError(e) {
    if (e && e.name === "AbortError") return "";
    if (e && e.name === "InvalidStateError") return "This security key or passkey is already registered.";
    if (e && e.name === "NotAllowedError") return "Cancelled, timed out, or no usable security key or passkey.";
    if (e && e.name === "SecurityError") return "This address cannot use passkeys (see the administrator).";
    return "Your browser could not use a security key or passkey" + (e && e.name ? " (" + e.name + ")." : ".");
  }

  function run(el, kind, extra, mediation) {
    var csrf = el.dataset.csrf || "";
    show(el, "");
    return post(el.dataset.options, csrf, extra).then(function (options) {
      if (options.error) throw {server: options.error};
      if (kind === "register") {
        return navigator.credentials.create({publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options)});
      }
      var request = {publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options)};
      if (mediation) {
        pending = new AbortController();
        request.mediation = "conditional";
        request.signal = pending.signal;
      }
      return navigator.credentials.get(request);
    }).then(function (credential) {
      pending = null;
      return post(el.dataset.answer, csrf, Object.assign({credential: credential.toJSON()}, extra));
    }).then(function (answer) {
      if (answer.error) throw {server: answer.error};
      window.location.assign(answer.redirect);
    }).catch(function (e) {
      if (mediation && pending === null && e && e.name === "AbortError") return;
      show(el, e && e.server ? e.server : browserError(e));
    });
  }

  function extras(el) {
    var out = {};
    if (el.dataset.rd) out.rd = el.dataset.rd;
    if (el.dataset.level) out.level = el.dataset.level;
    return out;
  }

  document.querySelectorAll("[data-webauthn=register]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var name = form.querySelector("input[name=name]");
      run(form, "register", Object.assign({name: name ? name.value : ""}, extras(form)));
    });
  });

  document.querySelectorAll("button[data-webauthn=step-up], button[data-webauthn=sign-in]").forEach(function (button) {
    button.addEventListener("click", function (ev) {
      ev.preventDefault();
      if (pending) { var p = pending; pending = null; p.abort(); } // one request at a time
      run(button, button.dataset.webauthn, extras(button), false);
    });
  });

  var conditional = document.querySelector("[data-webauthn=sign-in][data-conditional]");
  if (conditional && PublicKeyCredential.isConditionalMediationAvailable) {
    PublicKeyCredential.isConditionalMediationAvailable().then(function (ok) {
      if (ok) run(conditional, "sign-in", extras(conditional), true);
    });
  }
})();
