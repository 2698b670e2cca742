// tokens.js: revoke one revocable token by its jti (admins, or the signer that minted it),
// or every token of a subject (admins; signers whose kids are "all").

import * as api from "./api.js";
import { $ } from "./util.js";

let ctx = null;

function result(text) {
  $("#token-result").textContent = text;
}

async function revokeToken(ev) {
  ev.preventDefault();
  result("");
  const jti = $("#token-jti").value.trim();
  if (!jti) return;
  const r = await api.del("/v1/tokens/" + encodeURIComponent(jti));
  result("Token revoked:\n" + JSON.stringify(r, null, 2));
}

async function revokeSubject(ev) {
  ev.preventDefault();
  result("");
  const sub = $("#subject-sub").value;
  if (!sub) return;
  const r = await api.post("/v1/subjects/revoke", { sub });
  result("Subject revoked:\n" + JSON.stringify(r, null, 2));
}

export function init(c) {
  ctx = c;
  // A signer scoped to some kids may not revoke a subject (the handler's 403): not offered.
  if (ctx.me.role === "signer" && ctx.me.kids !== "all") {
    const f = $("#subject-revoke");
    if (f) f.remove();
  }
  const t = $("#token-revoke");
  if (t) t.addEventListener("submit", (ev) => ctx.guard(() => revokeToken(ev)));
  const s = $("#subject-revoke");
  if (s) s.addEventListener("submit", (ev) => ctx.guard(() => revokeSubject(ev)));
}

export function show() {}
export function hide() {}
