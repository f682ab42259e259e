"""A real HTTP server on 127.0.0.1 that writes raw bytes: for responses no well-behaved
server library would send (broken headers, trickled bodies, endless streams)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

# A handler gets the connected socket and the request target (path and query), and
# writes what it likes; routes are by path.
Handler = Callable[[socket.socket, str], None]


def respond(conn: socket.socket, body: bytes, *headers: str, status: str = "200 OK") -> None:
    head = "".join(f"{h}\r\n" for h in headers)
    conn.sendall(f"HTTP/1.1 {status}\r\n{head}Connection: close\r\n\r\n".encode() + body)


class RawHttpServer:
    """Serves plain HTTP, or HTTPS given a server-side TLS context."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.routes: dict[str, Handler] = {}
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()  # handlers that stream forever check this
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        if self.tls:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()
                return
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(4096)
                if not data:
                    return
                request += data
            target = request.split(b" ", 2)[1].decode("latin-1")
            handler = self.routes.get(target.split("?")[0])
            try:
                if handler is None:
                    respond(conn, b"", "Content-Length: 0", status="404 Not Found")
                else:
                    handler(conn, target)
            except OSError:  # the client hung up (as it should on a hostile response)
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
