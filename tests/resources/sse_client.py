#!/usr/bin/env python3
"""A Server-Sent Events client over a raw http.client connection, for the Rust
integration tests of GET /v1/inboxes/{address}/events.

Argument: a JSON plan
  {"url": "http://127.0.0.1:8787/v1/inboxes/bot@x/events",
   "token": "akcap1....",              # sent as Authorization: Bearer
   "last_event_id": "01H...",          # optional, sent as Last-Event-ID
   "count": 2,                         # stop after this many events
   "timeout": 30}                      # give up after this many seconds

As soon as the response headers arrive it prints one line `READY <status>` and
flushes (the server subscribes before it answers, so mail sent after READY must
show up). At the end it prints one JSON line:
  {"status": 200, "events": [{"event": ..., "id": ..., "data": {...}}],
   "comments": <keep-alive comment lines>, "ended": <server closed the stream>,
   "timed_out": bool, "body": <problem JSON for a non-200>}
"""
import http.client
import json
import socket
import sys
import time
import urllib.parse


def main():
    plan = json.loads(sys.argv[1])
    url = urllib.parse.urlsplit(plan["url"])
    deadline = time.monotonic() + float(plan.get("timeout", 30))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=float(plan.get("timeout", 30)))
    headers = {"Accept": "text/event-stream"}
    if plan.get("token"):
        headers["Authorization"] = "Bearer " + plan["token"]
    if plan.get("last_event_id"):
        headers["Last-Event-ID"] = plan["last_event_id"]
    conn.request("GET", url.path, headers=headers)
    resp = conn.getresponse()
    print(f"READY {resp.status}", flush=True)
    out = {"status": resp.status, "events": [], "comments": 0, "ended": False, "timed_out": False}
    if resp.status != 200:
        out["body"] = json.loads(resp.read() or b"null")
        print(json.dumps(out), flush=True)
        return
    want = int(plan.get("count", 1))
    event = {}
    while len(out["events"]) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            out["timed_out"] = True
            break
        if conn.sock is not None:
            conn.sock.settimeout(left)
        try:
            line = resp.fp.readline()
        except (socket.timeout, TimeoutError):
            out["timed_out"] = True
            break
        if not line:
            out["ended"] = True
            break
        line = line.decode().rstrip("\r\n")
        if line == "":
            if event:
                if "data" in event:
                    event["data"] = json.loads(event["data"])
                out["events"].append(event)
            event = {}
        elif line.startswith(":"):
            out["comments"] += 1
        else:
            field, _, value = line.partition(":")
            event[field] = value[1:] if value.startswith(" ") else value
    if plan.get("until_end") and not out["ended"] and not out["timed_out"]:
        # Read on until the server closes the stream (capability expiry).
        while time.monotonic() < deadline:
            try:
                line = resp.fp.readline()
            except (socket.timeout, TimeoutError):
                out["timed_out"] = True
                break
            if not line:
                out["ended"] = True
                break
            if line.startswith(b":"):
                out["comments"] += 1
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
