// health.js: readiness (/readyz) and, from /metrics (Prometheus text), the keys by state,
// the token sessions in use and the revocation sequence.

import * as api from "./api.js";
import { $ } from "./util.js";

let ctx = null;

// {name: [{labels: {..}, value}]} of a Prometheus text exposition.
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const p of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[p[1]] = p[2];
    (out[m[1]] = out[m[1]] || []).push({ labels, value: Number(m[4]) });
  }
  return out;
}

async function load() {
  const ready = $("#health-ready");
  try {
    const r = await api.get("/readyz", { auth: false });
    ready.dataset.status = "ready";
    ready.textContent = "ready (" + r.active_keys + " active keys)";
  } catch (e) {
    ready.dataset.status = "not-ready";
    ready.textContent = "not ready: " + e.code + ": " + e.message + (e.requestId ? " (X-Request-Id: " + e.requestId + ")" : "");
  }
  const text = await (await api.get("/metrics", { raw: true })).text();
  $("#health-raw").textContent = text;
  const m = parseMetrics(text);
  const keys = (m.signd_keys || []).map((s) => s.labels.state + ": " + s.value);
  $("#health-keys").textContent = keys.length ? keys.join(", ") : "none";
  const used = (m.signd_pkcs11_sessions_in_use || [])[0];
  const max = (m.signd_pkcs11_sessions_max || [])[0];
  $("#health-sessions").textContent = used ? used.value + (max ? " in use of " + max.value : " in use") : "unknown";
  const seq = (m.signd_revocation_seq || [])[0];
  $("#health-revocation-seq").textContent = seq ? String(seq.value) : "unknown";
}

export function init(c) {
  ctx = c;
  $("#health-refresh").addEventListener("click", () => ctx.guard(load));
}

export function show() {
  ctx.guard(load);
}

export function hide() {}
