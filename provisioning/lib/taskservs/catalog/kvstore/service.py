"""kvstore: a line-based TCP key-value server (stdlib only).

Commands (one per line): PING -> PONG; GET k -> value or NIL; SET k v -> OK;
INCR k -> new integer; DEL k -> 1 or 0; KEYS -> space-separated keys.
Every write is persisted to the data file atomically.

Run by `install` (POSIX sh) with --detach: the port is bound before the
service forks, so a busy port fails the install itself.
"""
import argparse
import json
import os
import socketserver
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from provisioning_service import detach  # noqa: E402 - lib/ beside this file


class Store:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        try:
            with open(path) as f:
                self.data = json.load(f)
        except (OSError, ValueError):
            self.data = {}

    def _persist(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def command(self, line):
        parts = line.strip().split(" ", 2)
        cmd = parts[0].upper() if parts and parts[0] else ""
        with self.lock:
            if cmd == "PING":
                return "PONG"
            if cmd == "GET" and len(parts) >= 2:
                return self.data.get(parts[1], "NIL")
            if cmd == "SET" and len(parts) == 3:
                self.data[parts[1]] = parts[2]
                self._persist()
                return "OK"
            if cmd == "INCR" and len(parts) >= 2:
                try:
                    value = int(self.data.get(parts[1], "0")) + 1
                except ValueError:
                    return "ERR not an integer"
                self.data[parts[1]] = str(value)
                self._persist()
                return str(value)
            if cmd == "DEL" and len(parts) >= 2:
                found = self.data.pop(parts[1], None) is not None
                if found:
                    self._persist()
                return "1" if found else "0"
            if cmd == "KEYS":
                return " ".join(sorted(self.data))
        return "ERR unknown command"


class Handler(socketserver.StreamRequestHandler):
    timeout = 60

    def handle(self):
        for raw in self.rfile:
            reply = self.server.store.command(raw.decode(errors="replace"))
            self.wfile.write((reply + "\n").encode())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--detach", action="store_true")
    ap.add_argument("--pidfile")
    ap.add_argument("--log", default=os.devnull)
    args = ap.parse_args()
    server = Server((args.host, args.port), Handler)
    server.store = Store(args.data)
    if args.detach:
        detach(server, args.pidfile, args.log)
    print(f"kvstore serving on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
