"""The HTTP server under the API: ThreadingHTTPServer with a connection cap.

One thread per connection (http.server's ThreadingMixIn, daemon threads, so
long-polls never hold up shutdown); at most server.max_connections are
served at once, and a connection over the cap gets a quick 503 with
Retry-After on the accept thread. Requests are handled by api.ApiHandler.
"""

from __future__ import annotations

import logging
import select
import socket
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from provisioning.orchestrator import auth
from provisioning.orchestrator.api import ApiHandler
from provisioning.orchestrator.listen import port_in_use_error
from provisioning.orchestrator.sessions import SessionStore

if TYPE_CHECKING:
    from provisioning.config import Config

log = logging.getLogger("provisioning.orchestrator.api")


class OrchestratorServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # long-polls must not hold up shutdown
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], config: Config, *, token: str,
                 instance_id: str):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ApiHandler, bind_and_activate=True)
        self.config = config
        self.token = token
        self.instance_id = instance_id
        self.started = time.monotonic()
        self.engine = None
        self.registry = None
        self.draining = False
        self.allowed_hosts = auth.allowed_host_values(
            self.server_address[1], list(config.server.allowed_hosts), config.server.host)
        self._slots = threading.BoundedSemaphore(config.server.max_connections)
        self.sessions = SessionStore(config.server.ui_session_idle_seconds)  # dashboard sign-ins

    def attach(self, engine: Any, registry: Any) -> None:
        self.engine = engine
        self.registry = registry

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        """Over the connection cap: a quick 503 on the accept thread, then close."""
        body = b'{"error":"too many connections; retry shortly"}'
        head = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n")
        try:
            # Read what already arrived (briefly) so closing does not reset the reply.
            if select.select([request], [], [], 0.05)[0]:
                request.setblocking(False)
                try:
                    request.recv(65536)
                except OSError:
                    pass
            request.settimeout(1)
            request.sendall(head + body)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended: %s", client_address, error)
        else:
            log.exception("unexpected error serving %s", client_address)


def make_server(config: Config, *, token: str, instance_id: str) -> OrchestratorServer:
    host = config.server.host.strip("[]")
    try:
        return OrchestratorServer((host, config.server.port), config, token=token,
                                  instance_id=instance_id)
    except OSError as e:
        raise port_in_use_error(config, e) from e
