// util.js: small DOM helpers. Text always goes in as text nodes (never innerHTML), so
// nothing the appliance returns can become markup.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

// el("td", {class: "state", dataset: {kid}}, "text", child...)
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

// A Unix time as "2026-12-06 20:17:04Z" (UTC, sortable, unambiguous), or "" for none.
export function fmtTime(t) {
  if (t === undefined || t === null || t === 0) return "";
  return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// A datetime-local input's value (read as UTC, like every time the console shows) as Unix
// seconds; a bare number is taken as Unix seconds already. undefined when empty.
export function parseTime(v) {
  v = (v || "").trim();
  if (v === "") return undefined;
  if (/^\d+$/.test(v)) return Number(v);
  const ms = Date.parse(v.length === 16 ? v + ":00Z" : v + "Z");
  if (Number.isNaN(ms)) throw new Error("not a time: " + v);
  return Math.floor(ms / 1000);
}
