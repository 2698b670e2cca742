// revocations.js: the revocations, live. The stream (the public /v1/revocations/events,
// through EventSource) is opened first and the list (/v1/revocations) read after, so that
// nothing revoked in between is missed; both feed one list, newest on top, each entry once.
// Key and subject revocations share one sequence (data-seq); token revocations have their
// own (data-kind="token").

import * as api from "./api.js";
import { $, el, clear, fmtTime } from "./util.js";

let ctx = null;
let source = null;
const seen = new Set();

function status(text) {
  $("#revocations-status").textContent = text;
}

function item(kind, r) {
  const id = kind + ":" + r.seq;
  if (seen.has(id)) return null;
  seen.add(id);
  let text;
  if (kind === "key") text = "key " + r.kid + " revoked " + fmtTime(r.revoked_at) + ": " + r.reason;
  else if (kind === "subject") text = "subject " + JSON.stringify(r.sub) + ": tokens issued before " + fmtTime(r.before);
  else text = "token " + r.jti + " revoked " + fmtTime(r.revoked_at) + " (status list " + r.list + ", index " + r.idx + ")";
  return el(
    "li",
    { dataset: { seq: String(r.seq), kind } },
    el("strong", {}, kind === "token" ? "token #" + r.seq : "#" + r.seq),
    " ",
    text,
  );
}

// Live entries go on top; the initial list, older, goes below them in seq order.
function prepend(li) {
  if (li) $("#revocations-list").prepend(li);
}

async function initial() {
  const doc = await api.get("/v1/revocations", { auth: false });
  const items = [];
  for (const r of doc.revoked || []) items.push(["key", r]);
  for (const s of doc.subjects || []) items.push(["subject", s]);
  items.sort((a, b) => b[1].seq - a[1].seq);
  const list = $("#revocations-list");
  for (const [kind, r] of items) {
    const li = item(kind, r);
    if (li) list.append(li);
  }
  if (!list.firstChild) status(status_text() + " (no revocation yet)");
}

function status_text() {
  return source && source.readyState === EventSource.OPEN ? "open" : "connecting";
}

function open() {
  source = new EventSource("/v1/revocations/events");
  source.addEventListener("open", () => status("open"));
  source.addEventListener("error", () => status(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting"));
  const on = (kind) => (ev) => {
    try {
      prepend(item(kind, JSON.parse(ev.data)));
    } catch (e) {
      ctx.error(e);
    }
  };
  source.addEventListener("revocation", on("key"));
  source.addEventListener("subject-revocation", on("subject"));
  source.addEventListener("token-revocation", on("token"));
}

function close() {
  if (source) source.close();
  source = null;
  status("closed");
}

export function init(c) {
  ctx = c;
}

export function show() {
  close();
  seen.clear();
  clear($("#revocations-list"));
  status("connecting");
  open();
  ctx.guard(initial);
}

export function hide() {
  close();
}
