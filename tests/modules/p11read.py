#!/usr/bin/python3
"""Reads a key's objects straight from the token, as an auditor would, and prints them as
JSON: p11read.py MODULE_SO TOKEN_LABEL PIN_FILE KID_HEX.

The PIN is read from the 0600 file here and given to C_Login: it never reaches an argv, an
environment or a log (pkcs11-tool and p11tool take it on their command line or in the
environment). Its own process, so the module is loaded and finalised away from pytest's.
"""
import json
import sys

import PyKCS11

module, label, pin_file, kid = sys.argv[1:5]
lib = PyKCS11.PyKCS11Lib()
lib.load(module)
slot = None
for s in lib.getSlotList(tokenPresent=True):
    if lib.getTokenInfo(s).label.strip().rstrip("\0") == label:
        slot = s
        break
if slot is None:
    sys.exit("no token labelled %r" % label)
with open(pin_file) as f:
    pin = f.read().rstrip("\n")
session = lib.openSession(slot)
session.login(pin)
del pin

BOOL = {
    "sensitive": PyKCS11.CKA_SENSITIVE,
    "extractable": PyKCS11.CKA_EXTRACTABLE,
    "never_extractable": PyKCS11.CKA_NEVER_EXTRACTABLE,
    "always_sensitive": PyKCS11.CKA_ALWAYS_SENSITIVE,
    "sign": PyKCS11.CKA_SIGN,
    "decrypt": PyKCS11.CKA_DECRYPT,
    "unwrap": PyKCS11.CKA_UNWRAP,
    "derive": PyKCS11.CKA_DERIVE,
    "sign_recover": PyKCS11.CKA_SIGN_RECOVER,
    "token": PyKCS11.CKA_TOKEN,
    "private": PyKCS11.CKA_PRIVATE,
    "local": PyKCS11.CKA_LOCAL,
}
out = {}
cka_id = tuple(bytes.fromhex(kid))
for name, cls in (("private", PyKCS11.CKO_PRIVATE_KEY), ("public", PyKCS11.CKO_PUBLIC_KEY)):
    objs = session.findObjects([(PyKCS11.CKA_CLASS, cls), (PyKCS11.CKA_ID, cka_id)])
    out[name] = []
    for o in objs:
        attrs = {}
        for k, a in BOOL.items():
            try:
                v = session.getAttributeValue(o, [a])[0]
            except PyKCS11.PyKCS11Error:
                v = None  # not an attribute of this class (or refused)
            attrs[k] = None if v is None else bool(v)
        # The value itself must be refused for the private key (sensitive).
        try:
            v = session.getAttributeValue(o, [PyKCS11.CKA_PRIVATE_EXPONENT])[0]
            attrs["private_exponent_readable"] = v is not None and len(v) > 0
        except PyKCS11.PyKCS11Error:
            attrs["private_exponent_readable"] = False
        out[name].append(attrs)
session.logout()
session.closeSession()
print(json.dumps(out))
