// credentials.js: the credentials view (admins). The list, revoke (confirmed in a dialog),
// and create: the secret is shown once, with a copy button, and wiped from the page when
// the view is left.

import * as api from "./api.js";
import { $, el, clear, fmtTime } from "./util.js";

let ctx = null;

async function load() {
  const doc = await api.get("/v1/credentials");
  const body = $("#credentials-table tbody");
  clear(body);
  const canRevoke = ctx.can("DELETE /v1/credentials/{id}");
  for (const c of doc.credentials) {
    const kids = c.kids === undefined ? "" : c.kids === "all" ? "all" : c.kids.join(", ");
    const action = el("td", { class: "action" });
    if (canRevoke && c.state === "active") {
      action.append(
        el("button", {
          type: "button",
          class: "revoke danger",
          "aria-label": "Revoke credential " + c.id + (c.label ? " (" + c.label + ")" : ""),
          onclick: () => openRevoke(c),
          text: "Revoke",
        }),
      );
    }
    body.append(
      el(
        "tr",
        { dataset: { id: c.id } },
        el("td", { class: "id" }, el("code", {}, c.id)),
        el("td", { class: "role" }, c.role),
        el("td", { class: "label" }, c.label),
        el("td", { class: "state state-" + c.state }, c.state),
        el("td", { class: "kids" }, kids),
        el("td", { class: "created" }, fmtTime(c.created_at)),
        action,
      ),
    );
  }
}

function openRevoke(c) {
  const d = $("#cred-revoke-dialog");
  d.dataset.id = c.id;
  $("#cred-revoke-id").textContent = c.id + (c.label ? " (" + c.label + ")" : "");
  d.showModal();
  $("#cred-revoke-cancel").focus();
}

async function confirmRevoke() {
  const d = $("#cred-revoke-dialog");
  d.close();
  await api.del("/v1/credentials/" + d.dataset.id);
  await load();
}

function clearSecret() {
  const out = $("#cred-secret");
  if (out) out.textContent = "";
  const box = $("#cred-secret-box");
  if (box) box.hidden = true;
  const st = $("#cred-copy-status");
  if (st) st.textContent = "";
}

async function create(ev) {
  ev.preventDefault();
  clearSecret();
  const role = $("#cred-role").value;
  const body = { role };
  const label = $("#cred-label").value;
  if (label !== "") body.label = label;
  if (role === "signer") {
    const kids = $("#cred-kids").value.trim();
    body.kids = kids === "all" || kids === "" ? "all" : kids.split(",").map((s) => s.trim()).filter((s) => s);
  }
  const c = await api.post("/v1/credentials", body);
  $("#cred-secret").textContent = c.secret;
  $("#cred-secret-box").hidden = false;
  $("#cred-copy").focus();
  await load();
}

async function copy() {
  const text = $("#cred-secret").textContent;
  const st = $("#cred-copy-status");
  try {
    await navigator.clipboard.writeText(text);
    st.textContent = "copied";
  } catch (e) {
    // No clipboard permission: select it for Ctrl-C instead.
    const r = document.createRange();
    r.selectNodeContents($("#cred-secret"));
    const s = getSelection();
    s.removeAllRanges();
    s.addRange(r);
    st.textContent = "selected: press Ctrl-C to copy";
  }
}

function roleChanged() {
  const signer = $("#cred-role").value === "signer";
  $("#cred-kids").disabled = !signer;
}

export function init(c) {
  ctx = c;
  const form = $("#cred-create");
  if (form) {
    form.addEventListener("submit", (ev) => ctx.guard(() => create(ev)));
    $("#cred-role").addEventListener("change", roleChanged);
    roleChanged();
  }
  const cp = $("#cred-copy");
  if (cp) cp.addEventListener("click", copy);
  const d = $("#cred-revoke-dialog");
  if (d) {
    $("#cred-revoke-confirm").addEventListener("click", () => ctx.guard(confirmRevoke));
    $("#cred-revoke-cancel").addEventListener("click", () => d.close());
    d.querySelector("form").addEventListener("submit", (ev) => ev.preventDefault());
  }
}

export function show() {
  clearSecret();
  ctx.guard(load);
}

// The secret is shown once: leaving the view forgets it.
export function hide() {
  clearSecret();
}
