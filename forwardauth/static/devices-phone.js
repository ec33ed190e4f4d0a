// The phone page of device approval: this browser is the approving device.
//
// It keeps the device credential in localStorage (only this origin's own
// script reads it: the page's CSP allows no other script), pairs from the
// QR code's URL fragment (#code=..., which never reaches a server or its
// logs), and long-polls GET /api/v1/device/requests with If-None-Match while
// the page is visible, exactly as `forwardauth device watch` does: a 304 is
// "nothing new", the next poll goes out at once on the same connection;
// errors back off (1 s doubling to 60 s, with jitter; Retry-After wins), and
// never more than 10 polls in 10 s. Every text from the server goes into
// the page with textContent, never as HTML.
"use strict";
(() => {
  const KEY = "forwardauth-device";
  const $ = (id) => document.getElementById(id);

  function status(text, kind) {
    const n = $("status");
    n.textContent = text || "";
    n.className = "notice " + (kind || "info");
    n.hidden = !text;
  }
  function screen(id) {
    for (const s of document.querySelectorAll("[data-screen]")) s.hidden = s.id !== id;
  }
  function load() {
    try {
      const v = JSON.parse(localStorage.getItem(KEY) || "null");
      return v && typeof v.credential === "string" ? v : null;
    } catch (e) {
      return null;
    }
  }
  let saved = load();
  const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
  const auth = () => ({ Authorization: "Bearer " + saved.credential });
  async function problem(r) {
    const body = await r.json().catch(() => ({}));
    return body.error_description || "the server answered HTTP " + r.status;
  }

  // --- pairing ------------------------------------------------------------------
  const code = new URLSearchParams(location.hash.slice(1)).get("code");
  if (code) history.replaceState(null, "", location.pathname); // out of the address bar and history

  $("pair-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("pair-button").disabled = true;
    try {
      const r = await fetch("/api/v1/device/pair", {
        method: "POST", cache: "no-store", credentials: "omit",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ code: code, name: $("device-name").value }),
      });
      if (r.status !== 201) throw new Error(await problem(r));
      const body = await r.json();
      saved = { id: body.device.id, name: body.device.name, user: body.device.user, credential: body.credential };
      localStorage.setItem(KEY, JSON.stringify(saved));
      status("Paired: sign-ins of " + saved.user + " can be approved here.", "info");
      start();
    } catch (e) {
      status("Not paired: " + e.message, "error");
      $("pair-button").disabled = false;
    }
  });

  $("forget").addEventListener("click", async () => {
    if (!saved) return;
    const r = await fetch("/api/v1/device", { method: "DELETE", cache: "no-store", credentials: "omit",
                                              headers: auth() }).catch(() => null);
    localStorage.removeItem(KEY);
    saved = null;
    stop();
    screen("unpaired");
    status(r && (r.status === 204 || r.status === 401) ? "This phone is forgotten."
      : "Forgotten here; remove it on the devices page too (the server was not reachable).", "info");
  });

  // --- the requests ----------------------------------------------------------------
  const shown = new Map(); // request id -> its element

  function show(requests) {
    const ids = new Set(requests.map((r) => r.id));
    for (const [id, el] of shown) if (!ids.has(id)) { el.remove(); shown.delete(id); }
    for (const r of requests) if (!shown.has(r.id)) shown.set(r.id, card(r));
    $("idle").hidden = shown.size > 0;
  }

  function card(r) {
    const el = document.createElement("div");
    el.className = "request";
    el.dataset.request = r.id;
    const h = document.createElement("h2");
    h.textContent = "Sign-in to " + r.host + r.path;
    const who = document.createElement("p");
    who.className = "help";
    who.textContent = "From " + (r.client || "an unknown address") + " · " + (r.user_agent || "unknown browser")
      + " · level " + r.level;
    const ask = document.createElement("p");
    ask.textContent = "Which phrase does that browser show?";
    const choices = document.createElement("div");
    choices.className = "phrases";
    for (const phrase of r.phrases) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = phrase;
      b.dataset.phrase = phrase;
      b.addEventListener("click", () => answer(r, el, { decision: "approve", phrase: phrase }));
      choices.append(b);
    }
    const deny = document.createElement("button");
    deny.type = "button";
    deny.className = "link";
    deny.textContent = "None of these: deny";
    deny.dataset.deny = "";
    deny.addEventListener("click", () => answer(r, el, { decision: "deny" }));
    el.append(h, who, ask, choices, deny);
    $("requests").append(el);
    if (navigator.vibrate) navigator.vibrate(200);
    return el;
  }

  async function answer(r, el, body) {
    for (const b of el.querySelectorAll("button")) b.disabled = true;
    try {
      const resp = await fetch("/api/v1/device/requests/" + encodeURIComponent(r.id), {
        method: "POST", cache: "no-store", credentials: "omit",
        headers: Object.assign({ "Content-Type": "application/json" }, auth()), body: JSON.stringify(body),
      });
      if (resp.status !== 200) throw new Error(await problem(resp));
      const done = await resp.json();
      if (done.state === "approved") status("Approved: " + r.host + " signs you in.", "info");
      else if (done.reason === "wrong_phrase") status("Denied: that is not the phrase the browser showed. "
        + "If you did not start this sign-in, someone else did: change your password.", "error");
      else status("Denied.", "info");
    } catch (e) {
      status("Not recorded: " + e.message, "error");
    }
    el.remove();
    shown.delete(r.id);
    $("idle").hidden = shown.size > 0;
  }

  // --- the long-poll -----------------------------------------------------------------
  let etag = null, controller = null, running = false, failures = 0;
  const sent = [];

  async function pace() { // never more than 10 polls in 10 s, whatever the server answers
    const now = Date.now();
    while (sent.length && now - sent[0] > 10000) sent.shift();
    if (sent.length >= 10) await sleep(10000 - (now - sent[0]));
    sent.push(Date.now());
  }
  async function backoff(retryAfter) {
    failures += 1;
    const cap = Math.min(60, Math.pow(2, failures - 1));
    let wait = cap / 2 + Math.random() * cap / 2;
    const ra = parseInt(retryAfter || "", 10);
    if (ra > 0) wait = Math.max(wait, Math.min(ra, 3600));
    status("The server is not reachable; trying again in " + Math.round(wait) + " s.", "error");
    await sleep(wait * 1000);
  }

  async function loop() {
    if (running) return;
    running = true;
    while (saved && document.visibilityState === "visible") {
      await pace();
      controller = new AbortController();
      const headers = auth();
      if (etag) headers["If-None-Match"] = etag;
      let r;
      try {
        r = await fetch("/api/v1/device/requests", { headers: headers, cache: "no-store", credentials: "omit",
                                                     signal: controller.signal });
      } catch (e) {
        if (controller.signal.aborted) break;
        await backoff(null);
        continue;
      }
      if (r.status === 200 || r.status === 304) {
        if (failures) status("");
        failures = 0;
        etag = r.headers.get("ETag") || etag;
        if (r.status === 200) show((await r.json()).requests);
      } else if (r.status === 401) {
        localStorage.removeItem(KEY);
        saved = null;
        screen("unpaired");
        status("This phone was removed (or the account locked): pair it again to approve sign-ins.", "error");
      } else {
        await backoff(r.headers.get("Retry-After"));
      }
    }
    running = false;
  }
  function start() {
    screen("watching");
    loop();
  }
  function stop() {
    if (controller) controller.abort();
  }
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && saved) { etag = null; loop(); } else stop();
  });

  if (code && !saved) screen("pair");
  else if (saved) start();
  else screen("unpaired");
  if (code && saved) status("This phone is paired already; forget it first to pair it again.", "info");
})();
