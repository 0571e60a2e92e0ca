"""web: static files from --docroot, plus /visits (a counter kept in kvstore)."""
import argparse
import functools
import socket
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--docroot", required=True)
    ap.add_argument("--kv-port", type=int, required=True)
    ap.add_argument("--hostname", default="")
    args = ap.parse_args()
    Handler.kv = (args.host, args.kv_port)
    Handler.hostname = args.hostname
    handler = functools.partial(Handler, directory=args.docroot)
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    print(f"web serving {args.docroot} on http://{args.host}:{args.port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
