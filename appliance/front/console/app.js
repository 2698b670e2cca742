// app.js: sign-in, the session, the views and the error banner. What the page shows
// follows the credential's role: GET /v1/whoami lists the operations the routes' table
// lets that role call, and every element whose data-needs names another is removed from
// the DOM (not hidden), so the page offers nothing the appliance would answer 403.

import * as api from "./api.js";
import { $, $$ } from "./util.js";
import * as keys from "./keys.js";
import * as credentials from "./credentials.js";
import * as tokens from "./tokens.js";
import * as revocations from "./revocations.js";
import * as audit from "./audit.js";
import * as health from "./health.js";

const VIEWS = { keys, credentials, tokens, revocations, audit, health };

const ctx = {
  me: null,
  ops: new Set(),
  can(op) {
    return this.ops.has(op);
  },
  error: showError,
  clearError,
  // Runs fn, showing any error it throws; its value, or undefined after an error.
  async guard(fn) {
    try {
      clearError();
      return await fn();
    } catch (e) {
      showError(e);
      return undefined;
    }
  },
};

let current = null;

export function showError(e) {
  const box = $("#error");
  const code = e && e.code ? e.code : "client_error";
  const rid = e && e.requestId ? e.requestId : "";
  box.dataset.code = code;
  box.dataset.requestId = rid;
  $("#error-text").textContent =
    code + ": " + (e && e.message ? e.message : String(e)) + (rid ? " (X-Request-Id: " + rid + ")" : "");
  box.hidden = false;
  if (!(e instanceof api.ApiError)) console.error(e);
}

export function clearError() {
  const box = $("#error");
  box.hidden = true;
  box.dataset.code = "";
  box.dataset.requestId = "";
  $("#error-text").textContent = "";
}

// Removes what this role may not use (data-needs: one "METHOD /template"; data-needs-any:
// several separated by "|").
function prune() {
  for (const e of $$("[data-needs]")) if (!ctx.can(e.dataset.needs)) e.remove();
  for (const e of $$("[data-needs-any]"))
    if (!e.dataset.needsAny.split("|").some((op) => ctx.can(op))) e.remove();
}

function allowedViews() {
  return $$("#nav a[data-view]").map((a) => a.dataset.view);
}

function show(name) {
  const allowed = allowedViews();
  if (!allowed.includes(name)) name = allowed[0];
  if (current === name) return;
  if (current && VIEWS[current].hide) VIEWS[current].hide(ctx);
  for (const v of Object.keys(VIEWS)) {
    const s = $("#view-" + v);
    if (s) s.hidden = v !== name;
  }
  for (const a of $$("#nav a")) {
    if (a.dataset.view === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  current = name;
  clearError();
  if (VIEWS[name].show) VIEWS[name].show(ctx);
}

async function start() {
  let me;
  try {
    me = await api.get("/v1/whoami");
  } catch (e) {
    api.clearSecret();
    $("#signin").hidden = false;
    $("#secret").focus();
    showError(e);
    return;
  }
  ctx.me = me;
  ctx.ops = new Set(me.operations.map((o) => o.method + " " + o.path));
  prune();
  const who = $("#whoami");
  who.dataset.role = me.role;
  who.textContent = "Signed in as " + me.role + (me.label ? " “" + me.label + "”" : "") + " (" + me.id + ")";
  $("#session").hidden = false;
  $("#signin").hidden = true;
  $("#nav").hidden = false;
  for (const [name, v] of Object.entries(VIEWS)) if ($("#view-" + name) && v.init) v.init(ctx);
  show((location.hash || "#").slice(1));
}

function signOut() {
  api.clearSecret();
  // A fresh page: nothing of the session (the secret, shown data, removed controls) stays.
  location.replace(location.pathname);
}

function boot() {
  $("#error-close").addEventListener("click", clearError);
  $("#signout").addEventListener("click", signOut);
  $("#signin").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("#secret").value.trim();
    $("#secret").value = "";
    if (!v) return;
    api.setSecret(v);
    clearError();
    start();
  });
  window.addEventListener("hashchange", () => {
    if (ctx.me) show(location.hash.slice(1));
  });
  if (api.secret()) {
    start();
  } else {
    $("#signin").hidden = false;
    $("#secret").focus();
  }
}

boot();
