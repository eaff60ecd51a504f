#!/usr/bin/python3
"""A python3-opendht client driven by the Go interop tests.

Usage: pydht.py BOOTSTRAP_HOST:PORT [identity-bits]
Reads one JSON command per line on stdin, writes one JSON object per line on
stdout: replies carry "re": <the command's "n">, listen callbacks carry
"event". Binds 127.0.0.1 only.
"""
import json
import sys
import threading

import opendht as dht

out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def describe(v):
    s = str(v)
    d = {"id": str(v.id), "data": bytes(v.data).hex(), "utype": v.user_type, "str": s}
    if "signed" in s or "encrypted" in s:
        d["owner"] = v.owner.toString().decode()
    return d


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    bits = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    ident = dht.Identity.generate("pydht", dht.Identity(), bits) if bits else None
    node = dht.DhtRunner()
    cfg = dht.DhtConfig()
    cfg.setRateLimit(-1, -1)
    node.run(id=ident, ipv4="127.0.0.1", port=0, config=cfg)
    node.bootstrap(host, port)
    info = {"ready": True, "node_id": node.getNodeId().decode(), "port": node.getBound().getPort()}
    if ident:
        info["pk_id"] = ident.publickey.getId().toString().decode()
    emit(info)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        n = cmd.get("n")
        op = cmd["op"]
        key = dht.InfoHash(cmd["key"].encode()) if "key" in cmd else None
        if op == "get":
            vals = node.get(key)
            emit({"re": n, "values": [describe(v) for v in vals]})
        elif op == "put":
            v = dht.Value(bytes.fromhex(cmd["data"]))
            if cmd.get("utype"):
                v.user_type = cmd["utype"]
            ok = node.put(key, v)
            emit({"re": n, "ok": ok, "id": str(v.id)})
        elif op == "listen":
            def cb(v, expired, k=cmd["key"]):
                e = describe(v)
                e.update({"event": "value", "key": k, "expired": bool(expired)})
                emit(e)
                return True
            node.listen(key, cb)
            emit({"re": n, "ok": True})
        elif op == "quit":
            break
    emit({"bye": True})
    node.join()


if __name__ == "__main__":
    main()
