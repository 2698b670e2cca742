// api.js: every call the console makes to the appliance. The credential secret lives in
// sessionStorage (this tab only, gone when the tab closes) and goes out as the bearer on
// each call; no cookie is ever involved. An API error becomes an ApiError carrying the
// error document's code and message and the response's X-Request-Id.

const KEY = "signd.console.secret";

export function secret() {
  return sessionStorage.getItem(KEY);
}

export function setSecret(s) {
  sessionStorage.setItem(KEY, s);
}

export function clearSecret() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId || "";
  }
}

// The error document {"error":{"code","message"}} of a failed response, as an ApiError.
async function failure(r) {
  let code = "http_" + r.status;
  let message = r.statusText || "request failed";
  try {
    const doc = await r.json();
    if (doc && doc.error && typeof doc.error.code === "string") {
      code = doc.error.code;
      message = doc.error.message || code;
    }
  } catch (e) {
    // not JSON: keep the status
  }
  return new ApiError(r.status, code, message, r.headers.get("X-Request-Id"));
}

// One call. body: an object sent as JSON, or undefined. opts.raw: the Response itself
// (text bodies: metrics, export). opts.auth false: no bearer (public routes).
export async function call(method, path, body, opts = {}) {
  const headers = {};
  const s = secret();
  if (s && opts.auth !== false) headers["Authorization"] = "Bearer " + s;
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network_error", "the appliance could not be reached: " + e.message, "");
  }
  if (!r.ok) throw await failure(r);
  if (opts.raw) return r;
  if (r.status === 204) return null;
  return r.json();
}

export const get = (path, opts) => call("GET", path, undefined, opts);
export const post = (path, body, opts) => call("POST", path, body === undefined ? {} : body, opts);
export const del = (path, body, opts) => call("DELETE", path, body, opts);
