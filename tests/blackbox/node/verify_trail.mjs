// The console's audit verifier (appliance/front/console/verify.js, the module the browser
// runs) on an export file (argv[2]) and the audit key document (argv[3], GET
// /v1/audit/key's JSON). Prints its verdict as one JSON line: {ok, events, lastSeq,
// lastCheckpoint, brokenSeq, why, checkpoints: [{seq, ok, why}]}, seqs as numbers.
import { readFileSync } from "node:fs";
import { webcrypto } from "node:crypto";

// Node 18 (Debian 12) has WebCrypto as node:crypto's webcrypto; later ones as a global too.
if (!globalThis.crypto || !globalThis.crypto.subtle)
    Object.defineProperty(globalThis, "crypto", { value: webcrypto, configurable: true });

const here = new URL(".", import.meta.url);
const { verifyExport } = await import(new URL("../../../appliance/front/console/verify.js", here));
const text = readFileSync(process.argv[2], "utf8");
const key = JSON.parse(readFileSync(process.argv[3], "utf8"));
const r = await verifyExport(text, key.jwk);
console.log(JSON.stringify(r, (k, v) => (typeof v === "bigint" ? Number(v) : v)));
