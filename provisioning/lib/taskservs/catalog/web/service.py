"""web: static files from --docroot, plus /visits (a counter kept in kvstore).

Run by `install` (POSIX sh) with --detach: it first records itself in kvstore
(`SET web:installed <hostname>`: web really uses what it requires), binds its
port, then forks; any failure before that fails the install.
"""
import argparse
import functools
import os
import socket
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from provisioning_service import detach  # noqa: E402 - lib/ beside this file


class Handler(SimpleHTTPRequestHandler):
    kv = ("127.0.0.1", 0)
    hostname = ""

    def do_GET(self):
        if self.path in ("/visits", "/healthz"):
            if self.path == "/healthz":
                body = b"ok\n"
            else:
                body = (f"visits: {self._incr()}\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def _incr(self):
        try:
            with socket.create_connection(self.kv, timeout=5) as s:
                s.sendall(f"INCR visits:{self.hostname}\n".encode())
                return s.recv(64).decode().strip()
        except OSError as e:
            return f"kvstore unavailable ({e})"


def mark_installed(kv, hostname):
    try:
        with socket.create_connection(kv, timeout=5) as s:
            s.sendall(f"SET web:installed {hostname}\n".encode())
            if not s.recv(64).startswith(b"OK"):
                raise OSError("kvstore did not answer OK")
    except OSError as e:
        sys.exit(f"kvstore at {kv[0]}:{kv[1]} is not reachable: {e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--docroot", required=True)
    ap.add_argument("--kv-port", type=int, required=True)
    ap.add_argument("--hostname", default="")
    ap.add_argument("--detach", action="store_true")
    ap.add_argument("--pidfile")
    ap.add_argument("--log", default=os.devnull)
    args = ap.parse_args()
    Handler.kv = (args.host, args.kv_port)
    Handler.hostname = args.hostname
    if args.detach:
        mark_installed(Handler.kv, args.hostname)
    handler = functools.partial(Handler, directory=args.docroot)
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    if args.detach:
        detach(server, args.pidfile, args.log)
    print(f"web serving {args.docroot} on http://{args.host}:{args.port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
