// keys.js: the keys view. The list (filtered by state), a key's fields, JWK, PEM (made here
// from the JWK with WebCrypto: the API serves PEM only when a key is created) and history
// (its audit events); for admins: create (count > 1 makes that many keys, one call each,
// with a progress bar), rotate with a grace period, revoke with a reason and the kid typed
// again to confirm.

import * as api from "./api.js";
import { $, el, clear, fmtTime } from "./util.js";

let ctx = null;
let selected = null; // the kid in #key-detail

async function load() {
  const state = $("#keys-filter").value;
  const doc = await api.get("/v1/keys" + (state === "all" ? "" : "?state=" + encodeURIComponent(state)));
  const body = $("#keys-table tbody");
  clear(body);
  for (const k of doc.keys) {
    const tr = el(
      "tr",
      { dataset: { kid: k.kid }, tabindex: "0", "aria-selected": k.kid === selected ? "true" : "false" },
      el("td", { class: "kid" }, el("code", {}, k.kid)),
      el("td", { class: "state state-" + k.state }, k.state),
      el("td", { class: "bits" }, String(k.bits)),
      el("td", { class: "label" }, k.label),
      el("td", { class: "created" }, fmtTime(k.created_at)),
      el("td", { class: "retire" }, fmtTime(k.retire_at)),
      el("td", { class: "revoked" }, fmtTime(k.revoked_at)),
    );
    tr.addEventListener("click", () => ctx.guard(() => detail(k.kid)));
    tr.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        ctx.guard(() => detail(k.kid));
      }
    });
    body.append(tr);
  }
  if (doc.keys.length === 0)
    body.append(el("tr", {}, el("td", { colspan: "7" }, "No key" + (state === "all" ? "" : " in state " + state) + ".")));
}

// The SubjectPublicKeyInfo of an RSA JWK as PEM.
async function pemOf(jwk) {
  const key = await crypto.subtle.importKey(
    "jwk",
    { kty: "RSA", n: jwk.n, e: jwk.e, alg: "RS256", ext: true },
    { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
    true,
    ["verify"],
  );
  const der = new Uint8Array(await crypto.subtle.exportKey("spki", key));
  let bin = "";
  for (const b of der) bin += String.fromCharCode(b);
  const b64 = btoa(bin).replace(/.{64}/g, "$&\n").replace(/\n$/, "");
  return "-----BEGIN PUBLIC KEY-----\n" + b64 + "\n-----END PUBLIC KEY-----\n";
}

async function history(kid) {
  const list = $("#key-history");
  clear(list);
  let after = 0;
  for (;;) {
    const page = await api.get("/v1/audit?kid=" + kid + "&limit=1000&after=" + after);
    for (const e of page.events) {
      list.append(
        el(
          "li",
          { dataset: { action: e.action, seq: String(e.seq) } },
          el("code", {}, e.action),
          " — seq " + e.seq + ", " + fmtTime(e.time) + ", by " + e.actor + " ",
          el("small", {}, JSON.stringify(e.details)),
        ),
      );
    }
    if (!page.next_after) break;
    after = page.next_after;
  }
  if (!list.firstChild) list.append(el("li", { class: "empty" }, "No event names this key."));
}

async function detail(kid) {
  const k = await api.get("/v1/keys/" + kid);
  selected = kid;
  const box = $("#key-detail");
  box.dataset.kid = kid;
  box.dataset.state = k.state;
  $("#key-detail-kid").textContent = kid;
  for (const tr of document.querySelectorAll("#keys-table tr[data-kid]"))
    tr.setAttribute("aria-selected", tr.dataset.kid === kid ? "true" : "false");
  const dl = $("#key-fields");
  clear(dl);
  const fields = [
    ["state", k.state],
    ["bits", k.bits],
    ["label", k.label],
    ["created", fmtTime(k.created_at)],
    ["retire at", fmtTime(k.retire_at)],
    ["successor", k.successor],
    ["predecessor", k.predecessor],
    ["revoked", fmtTime(k.revoked_at)],
    ["reason", k.reason],
    ["revocation seq", k.revocation_seq],
  ];
  for (const [name, v] of fields) {
    if (v === undefined || v === "" || v === null) continue;
    dl.append(el("dt", {}, name), el("dd", { dataset: { field: name } }, String(v)));
  }
  $("#key-jwk").textContent = JSON.stringify(k.jwk, null, 2);
  $("#key-pem").textContent = await pemOf(k.jwk);
  // Rotate and revoke only where the key's state allows them (the API would say 409).
  const rot = $("#key-rotate");
  if (rot) rot.disabled = k.state !== "active";
  const rev = $("#key-revoke");
  if (rev) rev.disabled = k.state === "revoked";
  box.hidden = false;
  await history(kid);
}

async function create(ev) {
  ev.preventDefault();
  const count = Math.max(1, Math.min(100, parseInt($("#key-count").value, 10) || 1));
  const body = { bits: parseInt($("#key-bits").value, 10) };
  const label = $("#key-label").value;
  if (label !== "") body.label = label;
  const bar = $("#key-progress");
  const status = $("#key-create-status");
  const button = $("#key-create-button");
  bar.max = count;
  bar.value = 0;
  bar.hidden = count <= 1;
  button.disabled = true;
  let made = null;
  try {
    for (let i = 0; i < count; i++) {
      status.textContent = count > 1 ? "creating " + (i + 1) + " of " + count + "…" : "creating…";
      made = await api.post("/v1/keys", body);
      bar.value = i + 1;
    }
    status.textContent = count > 1 ? count + " keys created" : "key " + made.kid + " created";
  } catch (e) {
    status.textContent = "stopped after " + bar.value + " of " + count;
    throw e;
  } finally {
    button.disabled = false;
    await load().catch(ctx.error);
  }
  if (made) await detail(made.kid);
}

async function rotate() {
  const grace = parseInt($("#rotate-grace").value, 10);
  const body = Number.isNaN(grace) ? {} : { grace_seconds: grace };
  const r = await api.post("/v1/keys/" + selected + "/rotate", body);
  await load();
  await detail(selected);
  const dl = $("#key-fields");
  dl.append(el("dt", {}, "rotated to"), el("dd", { dataset: { field: "rotated to" } }, r.kid));
}

function openRevoke() {
  const d = $("#revoke-dialog");
  $("#revoke-kid").textContent = selected;
  $("#revoke-reason").value = "";
  $("#revoke-confirm-kid").value = "";
  $("#revoke-confirm-button").disabled = true;
  d.dataset.kid = selected;
  d.showModal();
  $("#revoke-reason").focus();
}

async function confirmRevoke() {
  const d = $("#revoke-dialog");
  const kid = d.dataset.kid;
  if ($("#revoke-confirm-kid").value.trim() !== kid) return;
  const reason = $("#revoke-reason").value.trim();
  d.close();
  await api.del("/v1/keys/" + kid, reason ? { reason } : {});
  await load();
  await detail(kid);
}

export function init(c) {
  ctx = c;
  $("#keys-filter").addEventListener("change", () => ctx.guard(load));
  $("#keys-refresh").addEventListener("click", () => ctx.guard(load));
  const form = $("#key-create");
  if (form) form.addEventListener("submit", (ev) => ctx.guard(() => create(ev)));
  const rot = $("#key-rotate");
  if (rot) rot.addEventListener("click", () => ctx.guard(rotate));
  const rev = $("#key-revoke");
  if (rev) {
    rev.addEventListener("click", openRevoke);
    $("#revoke-confirm-kid").addEventListener("input", () => {
      $("#revoke-confirm-button").disabled = $("#revoke-confirm-kid").value.trim() !== $("#revoke-dialog").dataset.kid;
    });
    $("#revoke-confirm-button").addEventListener("click", () => ctx.guard(confirmRevoke));
    $("#revoke-cancel").addEventListener("click", () => $("#revoke-dialog").close());
    $("#revoke-form").addEventListener("submit", (ev) => ev.preventDefault());
  }
}

export function show() {
  ctx.guard(load);
}

export function hide() {}
