"""A stand-in for a rucio server (on 127.0.0.1) that the real rucio client talks to: user/password
authentication and ``POST /replicas/list``, with replicas of made-up files on made-up RSEs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RucioDouble:
    """``files``: DID name → list of {name, bytes, rses: {rse: [pfn, ...]}}; requests are recorded."""

    def __init__(self, files: dict[str, list[dict]], user: str = "tester", password: str = "secret"):
        self.files, self.user, self.password = files, user, password
        self.requests: list[dict] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _error(self, code: int, cls: str, msg: str) -> None:
                self.send_response(code)
                self.send_header("ExceptionClass", cls)
                self.send_header("ExceptionMessage", msg)
                self.send_header("Content-Type", "application/json")
                body = json.dumps({"ExceptionClass": cls, "ExceptionMessage": msg}).encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.startswith("/auth/userpass"):
                    if (self.headers.get("X-Rucio-Username"), self.headers.get("X-Rucio-Password")) != (
                        double.user, double.password):  # fmt: skip
                        return self._error(401, "CannotAuthenticate", "wrong user or password")
                    self.send_response(200)
                    self.send_header("X-Rucio-Auth-Token", "token-123")
                    self.send_header("X-Rucio-Auth-Token-Expires", "Sun, 01 Jan 2040 00:00:00 UTC")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._error(404, "NotFound", self.path)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                double.requests.append(
                    {"path": self.path, "body": body, "token": self.headers.get("X-Rucio-Auth-Token")}
                )
                if not self.path.startswith("/replicas/list"):
                    return self._error(404, "NotFound", self.path)
                lines = []
                for did in body.get("dids", []):
                    if did["name"] not in double.files:
                        return self._error(
                            404, "DataIdentifierNotFound", f"Data identifier '{did['scope']}:{did['name']}' not found"
                        )
                    for f in double.files[did["name"]]:
                        pfns = {}
                        for prio, (rse, urls) in enumerate(sorted(f["rses"].items()), start=1):
                            for u in urls:
                                pfns[u] = {"rse": rse, "type": "DISK", "priority": prio, "domain": "wan"}
                        lines.append(json.dumps({"scope": did["scope"], "name": f["name"], "bytes": f["bytes"],
                                                 "adler32": "00000001", "rses": f["rses"], "pfns": pfns,
                                                 "states": dict.fromkeys(f["rses"], "AVAILABLE")}))  # fmt: skip
                data = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-json-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RucioDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def config(self, directory: Path, password: str | None = None) -> Path:
        """A rucio.cfg for the client (point $RUCIO_CONFIG at it)."""
        cfg = directory / "rucio.cfg"
        cfg.write_text(
            "[client]\n"
            f"rucio_host = {self.url}\nauth_host = {self.url}\nauth_type = userpass\n"
            f"username = {self.user}\npassword = {password or self.password}\naccount = {self.user}\n"
            f"auth_token_file_path = {directory / 'token'}\n"
        )
        return cfg
