"""A minimal Swift endpoint for the Swift blockstore tests.

It is a stand-in: no Swift server can run here (no Swift package, no network), so this
implements, over real HTTP on loopback, just the part of the Swift API that
python-swiftclient uses for the blockstore:

* auth v1.0: `GET /auth/v1.0` with `X-Auth-User: <user>:<tenant>` and `X-Auth-Key`,
  answering `X-Storage-Url` and `X-Auth-Token` (401 on bad credentials);
* `HEAD /v1/AUTH_<tenant>/<container>`;
* `GET`, `HEAD`, `PUT`, `DELETE /v1/AUTH_<tenant>/<container>/<object>` (object names may
  hold `/`);
* every storage request needs the token (401 otherwise), unknown container/object: 404.

`failing = True` makes it answer 503 to everything; `stop()` closes the port.
"""

from __future__ import annotations

import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class SwiftStandIn:
    def __init__(self, user: str, tenant: str, key: str, containers: set[str]) -> None:
        self.user, self.tenant, self.key = user, tenant, key
        self.containers = set(containers)
        self.objects: dict[tuple[str, str], bytes] = {}  # (container, object name) -> data
        self.token = secrets.token_hex(16)
        self.failing = False
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._stopped = False

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth/v1.0"

    @property
    def storage_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/AUTH_{self.tenant}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                path = urlsplit(self.path).path
                standin.requests.append((self.command, path))
                body = b""
                if "Content-Length" in self.headers:
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                if standin.failing:
                    return self._reply(503, {}, b"Service Unavailable")
                if path == "/auth/v1.0" and self.command == "GET":
                    return self._auth()
                prefix = f"/v1/AUTH_{standin.tenant}/"
                if not path.startswith(prefix):
                    return self._reply(404, {})
                if self.headers.get("X-Auth-Token") != standin.token:
                    return self._reply(401, {})
                container, _, name = unquote(path[len(prefix) :]).partition("/")
                if container not in standin.containers:
                    return self._reply(404, {})
                if not name:
                    if self.command == "HEAD":
                        return self._reply(204, {"X-Container-Object-Count": "0"})
                    return self._reply(405, {})
                if self.command == "PUT":
                    standin.objects[container, name] = body
                    return self._reply(201, {"Etag": "x"})
                if self.command == "DELETE":
                    if standin.objects.pop((container, name), None) is None:
                        return self._reply(404, {}, b"Not Found")
                    return self._reply(204, {})
                data = standin.objects.get((container, name))
                if data is None:
                    return self._reply(404, {}, b"Not Found")
                return self._reply(200, {"Content-Type": "application/octet-stream"}, data)

            def _auth(self) -> None:
                user = self.headers.get("X-Auth-User")
                key = self.headers.get("X-Auth-Key")
                if user != f"{standin.user}:{standin.tenant}" or key != standin.key:
                    return self._reply(401, {}, b"Unauthorized")
                headers = {"X-Storage-Url": standin.storage_url, "X-Auth-Token": standin.token}
                return self._reply(200, headers)

            do_GET = do_HEAD = do_PUT = do_DELETE = _handle

        return Handler
