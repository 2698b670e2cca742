// Tries to verify a compact JWS (argv[3]) as a JWT under a JWKS (the file argv[2]) the way
// a relying party that trusts its JOSE library does: the key picked by kid, RS256 allowed,
// nothing else asked. Prints "accepted" or "refused <error code>"; exits 0 either way.
import { readFileSync } from "node:fs";
import { createLocalJWKSet, jwtVerify } from "jose";

const jwks = JSON.parse(readFileSync(process.argv[2], "utf8"));
try {
    await jwtVerify(process.argv[3], createLocalJWKSet(jwks), { algorithms: ["RS256"] });
    console.log("accepted");
} catch (e) {
    console.log("refused " + (e.code || e.name));
}
