// audit.js: the audit trail, paged (after/limit, next_after) and filtered by action, actor,
// kid and time; and "verify": the whole export and the audit key fetched, the chain and
// every checkpoint checked here (verify.js), the verdict shown per checkpoint and, when a
// link is broken, at its seq.

import * as api from "./api.js";
import { $, el, clear, fmtTime, parseTime } from "./util.js";
import { verifyExport } from "./verify.js";

const PAGE = 50;
const EXPORT_MAX = 100000; // events per export request (api/audit.c)

let ctx = null;
let pages = [0]; // the `after` of each page shown so far; the last is the current one
let nextAfter = 0;

function query(after) {
  const q = new URLSearchParams();
  const action = $("#audit-action").value.trim();
  const actor = $("#audit-actor").value.trim();
  const kid = $("#audit-kid").value.trim();
  if (action) q.set("action", action);
  if (actor) q.set("actor", actor);
  if (kid) q.set("kid", kid);
  const since = parseTime($("#audit-since").value);
  const until = parseTime($("#audit-until").value);
  if (since !== undefined) q.set("since", String(since));
  if (until !== undefined) q.set("until", String(until));
  q.set("limit", String(PAGE));
  if (after) q.set("after", String(after));
  return q.toString();
}

async function load() {
  const after = pages[pages.length - 1];
  const doc = await api.get("/v1/audit?" + query(after));
  const body = $("#audit-table tbody");
  clear(body);
  for (const e of doc.events) {
    body.append(
      el(
        "tr",
        { dataset: { seq: String(e.seq), action: e.action } },
        el("td", { class: "seq" }, String(e.seq)),
        el("td", { class: "time" }, fmtTime(e.time)),
        el("td", { class: "actor" }, e.actor),
        el("td", { class: "action" }, el("code", {}, e.action)),
        el("td", { class: "kid" }, e.kid ? el("code", {}, e.kid) : ""),
        el("td", { class: "details" }, el("code", {}, JSON.stringify(e.details))),
      ),
    );
  }
  if (doc.events.length === 0) body.append(el("tr", {}, el("td", { colspan: "6" }, "No event matches.")));
  nextAfter = doc.next_after || 0;
  $("#audit-prev").disabled = pages.length <= 1;
  $("#audit-next").disabled = !nextAfter;
  $("#audit-page").textContent =
    "page " + pages.length + (doc.events.length ? ", seq " + doc.events[0].seq + "–" + doc.events[doc.events.length - 1].seq : "");
}

async function apply(ev) {
  if (ev) ev.preventDefault();
  pages = [0];
  await load();
}

async function next() {
  if (!nextAfter) return;
  pages.push(nextAfter);
  await load();
}

async function prev() {
  if (pages.length <= 1) return;
  pages.pop();
  await load();
}

// The whole trail as one JSON Lines text, EXPORT_MAX events per request.
async function fetchExport(progress) {
  let text = "";
  for (let from = 1; ; from += EXPORT_MAX) {
    progress("fetching the export from seq " + from + "…");
    const r = await api.get("/v1/audit/export?from=" + from + "&to=" + (from + EXPORT_MAX - 1), { raw: true });
    const part = await r.text();
    text += part;
    // A part that reaches its last seq may have more after it.
    const lines = part.trimEnd().split("\n");
    let last = 0;
    for (let i = lines.length - 1; i >= 0 && lines[i]; i--) {
      const m = /"type":"event"/.test(lines[i]) && /"seq":(\d+)/.exec(lines[i]);
      if (m) {
        last = Number(m[1]);
        break;
      }
    }
    if (last < from + EXPORT_MAX - 1) return text;
  }
}

async function verify() {
  const result = $("#verify-result");
  const broken = $("#verify-broken");
  const list = $("#verify-checkpoints");
  const button = $("#audit-verify");
  const progressEl = $("#verify-progress");
  clear(list);
  broken.hidden = true;
  broken.dataset.seq = "";
  // data-status is only ever the verdict (ok or broken): none while it runs.
  result.hidden = true;
  result.removeAttribute("data-status");
  result.textContent = "";
  progressEl.hidden = false;
  const progress = (t) => (progressEl.textContent = t);
  button.disabled = true;
  try {
    const text = await fetchExport(progress);
    const key = await api.get("/v1/audit/key", { auth: false });
    progress("checking the chain and the checkpoints…");
    const v = await verifyExport(text, key.jwk, (n, total) => progress("checking line " + n + " of " + total + "…"));
    for (const c of v.checkpoints) {
      list.append(
        el(
          "li",
          { dataset: { seq: String(c.seq), status: c.ok ? "ok" : "bad" } },
          "checkpoint at seq " + c.seq + ": " + (c.ok ? "ok, signed by the audit key" : "BAD: " + c.why),
        ),
      );
    }
    progressEl.hidden = true;
    result.hidden = false;
    result.dataset.status = v.ok ? "ok" : "broken";
    result.textContent = v.ok
      ? "Verified: " + v.events + " events up to seq " + v.lastSeq + ", " + v.checkpoints.length +
        " checkpoints, the last at seq " + v.lastCheckpoint + "."
      : "Broken: " + v.why + " (" + v.events + " events read, " + v.checkpoints.filter((c) => !c.ok).length +
        " of " + v.checkpoints.length + " checkpoints bad).";
    if (v.brokenSeq !== 0n) {
      broken.dataset.seq = String(v.brokenSeq);
      broken.textContent = "The chain breaks at seq " + v.brokenSeq + ": " + v.why;
      broken.hidden = false;
    }
  } catch (e) {
    progress("The verification could not run (the error is shown above).");
    throw e;
  } finally {
    button.disabled = false;
  }
}

export function init(c) {
  ctx = c;
  $("#audit-filter").addEventListener("submit", (ev) => ctx.guard(() => apply(ev)));
  $("#audit-next").addEventListener("click", () => ctx.guard(next));
  $("#audit-prev").addEventListener("click", () => ctx.guard(prev));
  $("#audit-verify").addEventListener("click", () => ctx.guard(verify));
}

export function show() {
  ctx.guard(load);
}

export function hide() {}
