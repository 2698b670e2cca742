// verify.js: the audit trail's check, in the browser, with WebCrypto only. The same rules
// as appliance/core/auditverify.c (signdctl audit verify) and the same hash as
// base/chainhash.c, which appliance/store/chain.c appends with:
//
//   hash = SHA-256(prev_hash as 32 bytes || canonical(event)), canonical(event) the compact
//   JSON {"action","actor","details","kid","seq","time"} with keys sorted at every level,
//   no spaces, every non-ASCII character escaped as \uXXXX (jansson's JSON_COMPACT |
//   JSON_SORT_KEYS | JSON_ENSURE_ASCII); seq 1's prev_hash is 64 zeros.
//
// Links are checked from the first event the export holds; each checkpoint must name an
// event hash of the export and carry a JWS by the audit key (RS256, header exactly
// AV_CHECKPOINT_HEADER) over {"hash","seq","time"} equal to its line's.
//
// The export is parsed by the small JSON parser below rather than JSON.parse: numbers keep
// their exact digits (a JS number would round past 2^53 and hash other text), duplicate
// keys are refused as jansson refuses them, and "__proto__" is just a key. Pure module: no
// DOM, so `node` can import it (tests and the check against a real export).

const HEADER = { alg: "RS256", kid: "signd-audit-v1", typ: "signd-audit-checkpoint+jwt" };
const ZERO = "0".repeat(64);

// ---- JSON with exact numbers ---------------------------------------------------------------

export class JNum {
  constructor(text) {
    this.text = text;
  }
  isInteger() {
    return /^-?\d+$/.test(this.text);
  }
}

class JsonError extends Error {}

// Parses one JSON text: objects become Maps (in order), numbers JNum, the rest as JSON.parse.
export function parseJson(text) {
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const fail = (m) => {
    throw new JsonError(m + " at " + i);
  };
  function str() {
    // text[i] is '"'
    let j = i + 1;
    let out = "";
    for (;;) {
      if (j >= text.length) fail("unterminated string");
      const c = text[j];
      if (c === '"') break;
      if (c === "\\") {
        const e = text[j + 1];
        const simple = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
        if (e in simple) {
          out += simple[e];
          j += 2;
        } else if (e === "u") {
          const h = text.slice(j + 2, j + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(h)) fail("bad \\u escape");
          out += String.fromCharCode(parseInt(h, 16));
          j += 6;
        } else fail("bad escape");
      } else {
        if (c.charCodeAt(0) < 0x20) fail("control character in string");
        out += c;
        j++;
      }
    }
    i = j + 1;
    return out;
  }
  function value() {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const m = new Map();
      ws();
      if (text[i] === "}") {
        i++;
        return m;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a key");
        const k = str();
        if (m.has(k)) fail("duplicate key " + JSON.stringify(k));
        ws();
        if (text[i] !== ":") fail("expected ':'");
        i++;
        m.set(k, value());
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return m;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const a = [];
      ws();
      if (text[i] === "]") {
        i++;
        return a;
      }
      for (;;) {
        a.push(value());
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return a;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    const lit = /^(true|false|null)/.exec(text.slice(i, i + 5));
    if (lit) {
      i += lit[1].length;
      return lit[1] === "true" ? true : lit[1] === "false" ? false : null;
    }
    const num = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (num) {
      i += num[0].length;
      return new JNum(num[0]);
    }
    fail("unexpected character");
  }
  const v = value();
  ws();
  if (i !== text.length) fail("trailing characters");
  return v;
}

// ---- jansson's canonical form ---------------------------------------------------------------

// Code point order, which is the UTF-8 byte order jansson sorts keys in (strcmp).
function cmpKeys(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let k = 0; k < Math.min(x.length, y.length); k++) if (x[k] !== y[k]) return x[k] - y[k];
  return x.length - y.length;
}

function hex4(u) {
  return "\\u" + u.toString(16).toUpperCase().padStart(4, "0");
}

// A string as jansson dumps it with JSON_ENSURE_ASCII: \" \\ \b \f \n \r \t, other controls
// and everything above 0x7F as \uXXXX (upper-case hex; UTF-16 surrogate pairs above the BMP,
// which are the JS string's own code units); '/' and 0x7F as they are.
export function janssonString(s) {
  let out = '"';
  for (let k = 0; k < s.length; k++) {
    const u = s.charCodeAt(k);
    const c = s[k];
    if (c === '"') out += '\\"';
    else if (c === "\\") out += "\\\\";
    else if (u === 8) out += "\\b";
    else if (u === 12) out += "\\f";
    else if (u === 10) out += "\\n";
    else if (u === 13) out += "\\r";
    else if (u === 9) out += "\\t";
    else if (u < 0x20 || u > 0x7f) out += hex4(u);
    else out += c;
  }
  return out + '"';
}

// v (from parseJson) as compact JSON with sorted keys, ASCII only.
export function canonical(v) {
  if (v instanceof Map) {
    const keys = Array.from(v.keys()).sort(cmpKeys);
    return "{" + keys.map((k) => janssonString(k) + ":" + canonical(v.get(k))).join(",") + "}";
  }
  if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
  if (v instanceof JNum) return v.text;
  if (typeof v === "string") return janssonString(v);
  if (v === true) return "true";
  if (v === false) return "false";
  if (v === null) return "null";
  throw new Error("not a JSON value");
}

// ---- hashing and signatures -------------------------------------------------------------------

function subtle() {
  const c = globalThis.crypto;
  if (!c || !c.subtle) throw new Error("WebCrypto is not available (the console needs HTTPS)");
  return c.subtle;
}

function toHex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(h) {
  const out = new Uint8Array(h.length / 2);
  for (let k = 0; k < out.length; k++) out[k] = parseInt(h.substr(2 * k, 2), 16);
  return out;
}

function b64urlBytes(s) {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) throw new Error("not base64url");
  const b = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (s.length % 4)) % 4));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
}

// SHA-256(prev_hash as 32 bytes || canonical(event)) as lowercase hex: base/chainhash.c.
export async function eventHash(prevHex, seq, time, actor, action, kid, details) {
  const ev = new Map([
    ["action", action],
    ["actor", actor],
    ["details", details],
    ["kid", kid],
    ["seq", seq],
    ["time", time],
  ]);
  const text = new TextEncoder().encode(canonical(ev));
  const input = new Uint8Array(32 + text.length);
  input.set(fromHex(prevHex), 0);
  input.set(text, 32);
  return toHex(await subtle().digest("SHA-256", input));
}

// The audit key (GET /v1/audit/key's jwk) as a WebCrypto RS256 verification key.
export async function importAuditKey(jwk) {
  return subtle().importKey(
    "jwk",
    { kty: "RSA", n: jwk.n, e: jwk.e, alg: "RS256", ext: true },
    { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
    false,
    ["verify"],
  );
}

function sameJson(a, b) {
  return canonical(a) === canonical(b);
}

// "" when the checkpoint line's JWS is the audit key's over its hash and seq, else why not.
async function checkCheckpoint(key, line) {
  const jws = line.get("jws");
  const parts = typeof jws === "string" ? jws.split(".") : [];
  if (parts.length !== 3) return "checkpoint is not a compact JWS";
  let header, payload, sig;
  try {
    header = parseJson(new TextDecoder("utf-8", { fatal: true }).decode(b64urlBytes(parts[0])));
    payload = parseJson(new TextDecoder("utf-8", { fatal: true }).decode(b64urlBytes(parts[1])));
    sig = b64urlBytes(parts[2]);
  } catch (e) {
    return "checkpoint is not a compact JWS";
  }
  const want = new Map(Object.entries(HEADER));
  if (!sameJson(header, want)) return "checkpoint header is not the audit key's";
  const input = new TextEncoder().encode(parts[0] + "." + parts[1]);
  const ok = await subtle().verify({ name: "RSASSA-PKCS1-v1_5" }, key, sig, input);
  if (!ok) return "checkpoint signature does not verify with the audit key";
  if (!(payload instanceof Map) || !payload.has("hash") || !payload.has("seq") ||
      !sameJson(payload.get("hash"), line.get("hash")) || !sameJson(payload.get("seq"), line.get("seq")))
    return "checkpoint's signed seq or hash differs from its line";
  return "";
}

function seqOf(m) {
  const s = m instanceof Map ? m.get("seq") : undefined;
  if (!(s instanceof JNum) || !s.isInteger() || s.text.startsWith("-") || s.text === "0") return 0n;
  return BigInt(s.text);
}

// Verifies an export (JSON Lines text) against the audit key's JWK. Unlike the C verifier,
// which stops at the first failure, it walks on (over the stored hashes) so that every
// checkpoint gets its own verdict; a checkpoint at or after the first broken seq is bad,
// since it vouches for a chain that does not hold. brokenSeq is the first seq whose link
// fails (0n when every link holds, even if a checkpoint's signature does not). Returns
//   {ok, events, lastSeq, lastCheckpoint, brokenSeq (0n if none), why,
//    checkpoints: [{seq, ok, why}]}   (seqs as BigInt)
// onProgress(lineNo, lines) is called now and then.
export async function verifyExport(text, jwk, onProgress) {
  const key = await importAuditKey(jwk);
  const res = { ok: false, events: 0, lastSeq: 0n, lastCheckpoint: 0n, brokenSeq: 0n, why: "", checkpoints: [] };
  const broken = (seq, why) => {
    if (res.brokenSeq === 0n && res.why === "") {
      res.brokenSeq = seq;
      res.why = why;
    }
  };
  const lines = text.split("\n");
  if (lines.length && lines[lines.length - 1] === "") lines.pop();
  const hashes = new Map(); // seq (string) -> hash
  let first = 0n;
  let prevSeq = 0n;
  let prevHash = "";
  for (let n = 0; n < lines.length; n++) {
    if (onProgress && n % 500 === 0) onProgress(n, lines.length);
    let j = null;
    try {
      j = parseJson(lines[n]);
    } catch (e) {
      j = null;
    }
    const type = j instanceof Map ? j.get("type") : undefined;
    const seq = seqOf(j);
    if (!(j instanceof Map) || typeof type !== "string" || seq === 0n) {
      broken(prevSeq + 1n, "line " + (n + 1) + " is not an export line");
      continue;
    }
    if (type === "event") {
      const actor = j.get("actor"), action = j.get("action"), kid = j.get("kid");
      const ph = j.get("prev_hash"), h = j.get("hash"), details = j.get("details"), t = j.get("time");
      if (first !== 0n && seq !== prevSeq + 1n) {
        broken(prevSeq + 1n, (seq > prevSeq + 1n ? "missing: seq " : "out of order: seq ") + seq + " follows " + prevSeq);
      }
      if (typeof actor !== "string" || typeof action !== "string" || typeof kid !== "string" ||
          typeof ph !== "string" || typeof h !== "string" || !(details instanceof Map) ||
          !(t instanceof JNum) || !t.isInteger()) {
        broken(seq, "event has a missing or mistyped field");
        continue;
      }
      if (first !== 0n && ph !== prevHash) broken(seq, "prev_hash is not the hash of seq " + prevSeq);
      let computed = "";
      try {
        computed = /^[0-9a-f]{64}$/.test(ph) ? await eventHash(ph, j.get("seq"), t, actor, action, kid, details) : "";
      } catch (e) {
        computed = "";
      }
      if (computed !== h) broken(seq, "hash does not match the event's contents");
      if (first === 0n) first = seq;
      hashes.set(seq.toString(), h);
      prevHash = h;
      prevSeq = seq;
      res.events++;
      res.lastSeq = seq;
    } else if (type === "checkpoint") {
      const h = j.get("hash");
      let why = "";
      if (first === 0n || seq < first || seq > prevSeq) why = "checkpoint for seq " + seq + " has no event before it";
      else if (typeof h !== "string" || h !== hashes.get(seq.toString())) why = "checkpoint's hash is not the hash of event " + seq;
      else why = await checkCheckpoint(key, j);
      if (why === "") res.lastCheckpoint = seq;
      res.checkpoints.push({ seq, ok: why === "", why });
    } else {
      broken(prevSeq + 1n, "line " + (n + 1) + " has an unknown type");
    }
  }
  if (onProgress) onProgress(lines.length, lines.length);
  if (res.why === "" && res.events === 0) broken(0n, "the export holds no event");
  const badCp = res.checkpoints.find((c) => !c.ok);
  res.ok = res.why === "" && badCp === undefined;
  if (res.why === "" && badCp) res.why = "checkpoint " + badCp.seq + ": " + badCp.why;
  if (!res.ok) {
    // A checkpoint before the break stays good; every one at or after it cannot vouch.
    for (const c of res.checkpoints) {
      if (c.ok && res.brokenSeq !== 0n && c.seq >= res.brokenSeq) {
        c.ok = false;
        c.why = "covers the broken seq " + res.brokenSeq;
      }
    }
    res.lastCheckpoint = res.checkpoints.filter((c) => c.ok).reduce((m, c) => (c.seq > m ? c.seq : m), 0n);
  }
  return res;
}
