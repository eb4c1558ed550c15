"""A local stand-in of Kaggle's HTTP API, reached by the real `kaggle` client through HTTPS_PROXY.

It is one threaded HTTP server on 127.0.0.1 that plays two parts. As a proxy it answers
`CONNECT host:443` and terminates TLS itself with a certificate for that host signed by a test
certificate authority (trustme); the client trusts that authority through REQUESTS_CA_BUNDLE. As
Kaggle it then answers, inside the tunnel, the calls of the installed kagglesdk
(`POST /v1/<service>/<method>` with a JSON body, see kagglesdk/kaggle_http_client.py; among
them GetSubmissionLimits with a daily limit, which `daily_limit=None` makes an unknown method, as
on a server that predates it) and the storage URLs it hands out (a zip download with Range
support, a PUT upload). Errors come back in the JSON form kagglesdk raises from:
`{"code": 403, "message": "..."}` with that HTTP status.

Faults are scripted per call (`fail`, `drop_zip_once_after`), and every request is logged
(`requests`) so tests can assert what did, or did not, go over the wire. Nothing here is
production code; it knows only as much of Kaggle as the client uses.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.server
import io
import json
import socket
import socketserver
import ssl
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import trustme

API_HOST = "api.kaggle.com"
STORAGE_HOST = "storage.googleapis.com"
COMPETITION = "digit-recognizer"
ZIP_PATH = "/kaggle-competitions-data/kaggle-v2/3004/861823/bundle/archive.zip"
LAST_MODIFIED = "Mon, 02 Jan 2023 03:04:05 GMT"


def tiny_competition_zip(n_train: int = 3, n_test: int = 2) -> bytes:
    """A valid zip of the competition's form (same three members and columns), a few rows each."""
    pixels = ",".join(f"pixel{i}" for i in range(784))
    zeros = ",".join("0" for _ in range(784))
    members = {
        "train.csv": f"label,{pixels}\n" + "".join(f"{i % 10},{zeros}\n" for i in range(n_train)),
        "test.csv": f"{pixels}\n" + f"{zeros}\n" * n_test,
        "sample_submission.csv": "ImageId,Label\n" + "".join(f"{i},0\n"
                                                              for i in range(1, n_test + 1)),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # stored: no absurd ratio to trip on
        for name, text in members.items():
            z.writestr(name, text)
    return buf.getvalue()


@dataclass
class Fault:
    status: int
    message: str
    headers: dict


@dataclass
class Logged:
    method: str
    host: str
    path: str
    headers: dict
    body: bytes


@dataclass
class Submission:
    ref: int
    date: str
    description: str
    file_name: str
    sha256: str
    polls_left: int
    final_status: str
    score: str
    error: str
    status: str = "PENDING"

    def as_json(self) -> dict:
        out = {"ref": self.ref, "date": self.date, "description": self.description,
               "fileName": self.file_name, "status": self.status, "totalBytes": 0}
        if self.status == "COMPLETE":
            out["publicScore"] = self.score
        if self.status == "ERROR":
            out["errorDescription"] = self.error
        return out


@dataclass
class StandIn:
    """The stand-in's state: what it serves, what it accepts, the faults to inject, what it saw."""

    zip_bytes: bytes = field(default_factory=tiny_competition_zip)
    token: str | None = None  # accepted bearer token (KAGGLE_API_TOKEN, access_token)
    basic: tuple[str, str] | None = None  # accepted (username, key) of kaggle.json / env
    polls_to_score: int = 2  # ListSubmissions calls that still show PENDING
    final_status: str = "COMPLETE"  # or "ERROR"
    score: str = "0.98765"
    error_description: str = "Submission file has the wrong number of rows"
    daily_limit: int | None = 5  # submissions a day; None: GetSubmissionLimits is unknown here
    joined: bool = True  # False: GetSubmissionLimits answers all zeros, as before joining
    earlier: int = 0  # submissions made on earlier days (they count in numTotal only)
    requests: list[Logged] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    _faults: dict[str, list[Fault]] = field(default_factory=dict)
    _drop_after: int | None = None
    port: int = 0

    def fail(self, call: str, status: int, message: str = "", times: int = 1,
             headers: dict | None = None) -> None:
        """Fail the next `times` requests of `call` (an API method, "zip" or "upload")."""
        fault = Fault(status, message or f"Injected HTTP {status}", headers or {})
        self._faults.setdefault(call, []).extend([fault] * times)

    def drop_zip_once_after(self, n_bytes: int) -> None:
        """The next full zip download sends `n_bytes` of the body, then closes the connection."""
        self._drop_after = n_bytes

    def calls(self, name: str) -> list[Logged]:
        """Logged requests whose path ends with `name` (an API method, or "zip"/"upload")."""
        return [r for r in self.requests if r.path.split("?")[0].endswith(name)
                or (name == "zip" and r.path.startswith(ZIP_PATH))
                or (name == "upload" and r.method == "PUT")]

    def take_fault(self, call: str) -> Fault | None:
        queue = self._faults.get(call)
        return queue.pop(0) if queue else None


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: StandIn, tls: ssl.SSLContext):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.tls = tls
        self.lock = threading.Lock()
        self.open_sockets: set[socket.socket] = set()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection never holds a thread for long
    server: _Server
    tunnel_host = ""

    def log_message(self, format, *args):  # quiet: pytest shows failures, not access logs
        pass

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.open_sockets.add(self.connection)

    def finish(self):
        with self.server.lock:
            self.server.open_sockets.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    # -- proxy part ---------------------------------------------------------------------------

    def do_CONNECT(self):
        host = self.path.rsplit(":", 1)[0]
        self.send_response(200, "Connection established")
        self.end_headers()
        try:
            tls = self.server.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            self.close_connection = True
            return
        with self.server.lock:
            self.server.open_sockets.discard(self.connection)
            self.server.open_sockets.add(tls)
        self.connection = self.request = tls
        self.rfile = tls.makefile("rb", -1)
        self.wfile = socketserver._SocketWriter(tls)
        self.tunnel_host = host
        self.close_connection = False

    # -- Kaggle part ----------------------------------------------------------------------------

    def do_POST(self):
        self._dispatch()

    def do_GET(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def _dispatch(self):
        url = urlsplit(self.path)
        host = self.tunnel_host or url.hostname or self.headers.get("Host", "")
        body = self._read_body()
        state = self.server.state
        state.requests.append(Logged(self.command, host, self.path, dict(self.headers), body))
        if host == API_HOST and self.command == "POST" and url.path.startswith("/v1/"):
            method = url.path.rsplit("/", 1)[-1]
            return self._api(method, json.loads(body or b"{}"))
        if host == STORAGE_HOST and self.command == "GET" and url.path == ZIP_PATH:
            return self._zip()
        if host == STORAGE_HOST and self.command == "PUT" and url.path.startswith("/upload/"):
            return self._upload(url.path.rsplit("/", 1)[-1], body)
        self._error(404, f"No such endpoint: {self.command} {host}{url.path}")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes, headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: dict, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._send(status, json.dumps({"code": status, "message": message}).encode(), headers)

    def _authorized(self) -> bool:
        state = self.server.state
        auth = self.headers.get("Authorization", "")
        if state.token is not None and auth == f"Bearer {state.token}":
            return True
        if state.basic is not None:
            expected = base64.b64encode(":".join(state.basic).encode()).decode()
            return auth == f"Basic {expected}"
        return False

    def _api(self, method: str, request: dict) -> None:
        state = self.server.state
        if method == "IntrospectToken":
            active = state.token is not None and request.get("token") == state.token
            return self._json({"active": active, "username": "tester" if active else ""})
        fault = state.take_fault(method)
        if fault:
            return self._error(fault.status, fault.message, fault.headers)
        if not self._authorized():
            return self._error(401, "Unauthenticated: invalid or expired credentials")
        competition = request.get("competitionName")
        if competition != COMPETITION:
            return self._error(404, f"Competition '{competition}' not found")
        if method == "DownloadDataFiles":
            location = f"https://{STORAGE_HOST}{ZIP_PATH}?GoogleAccessId=x&Expires=1&Signature=s"
            return self._send(302, b"", {"Location": location}, content_type="text/plain")
        if method == "StartSubmissionUpload":
            token = f"blob-{len(state.uploads) + 1}"
            state.uploads[token] = b""
            return self._json({"token": token,
                               "createUrl": f"https://{STORAGE_HOST}/upload/{token}?upload_id=u"})
        if method == "GetSubmissionLimits" and state.daily_limit is not None:
            if not state.joined:
                return self._json({})  # every field at its default, zero
            today = len(state.submissions)
            return self._json({"numToday": today, "numTotal": state.earlier + today,
                               "numAllowedNow": max(0, state.daily_limit - today),
                               "limitedByTotal": False})
        if method == "CreateSubmission":
            if state.daily_limit is not None and len(state.submissions) >= state.daily_limit:
                return self._error(400, f"Your team has used its daily Submission allowance "
                                        f"({state.daily_limit}) today, please try again "
                                        f"tomorrow UTC.")
            token = request.get("blobFileTokens", "")
            if token not in state.uploads or not state.uploads[token]:
                return self._error(400, "Submission file was not uploaded")
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            sub = Submission(
                ref=100 + len(state.submissions), date=now,
                description=request.get("submissionDescription", ""), file_name="submission.csv",
                sha256=hashlib.sha256(state.uploads[token]).hexdigest(),
                polls_left=state.polls_to_score, final_status=state.final_status,
                score=state.score, error=state.error_description)
            state.submissions.append(sub)
            return self._json({"message": "Successfully submitted to Digit Recognizer",
                               "ref": sub.ref})
        if method == "ListSubmissions":
            for sub in state.submissions:
                if sub.status == "PENDING":
                    if sub.polls_left <= 0:
                        sub.status = sub.final_status
                    sub.polls_left -= 1
            newest_first = sorted(state.submissions, key=lambda s: s.ref, reverse=True)
            return self._json({"submissions": [s.as_json() for s in newest_first]})
        self._error(404, f"Unknown method {method}")

    def _zip(self) -> None:
        state = self.server.state
        fault = state.take_fault("zip")
        if fault:
            return self._error(fault.status, fault.message, fault.headers)
        data = state.zip_bytes
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        headers = {"Accept-Ranges": "bytes", "ETag": etag, "Last-Modified": LAST_MODIFIED}
        start = 0
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and self.headers.get("If-Range", etag) == etag:
            start = int(rng[len("bytes="):].split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        status = 206 if start else 200
        if start == 0 and state._drop_after is not None:
            cut, state._drop_after = state._drop_after, None
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data[:cut])
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(status, data[start:], headers, content_type="application/zip")

    def _upload(self, token: str, body: bytes) -> None:
        state = self.server.state
        fault = state.take_fault("upload")
        if fault:
            return self._error(fault.status, fault.message, fault.headers)
        if token not in state.uploads:
            return self._error(404, "Upload session expired")
        state.uploads[token] = body
        self._json({})


class Running:
    """A started stand-in: its state, the proxy URL and the CA bundle that trusts it."""

    def __init__(self, state: StandIn, ca_dir: Path):
        ca = trustme.CA()
        cert = ca.issue_cert(API_HOST, STORAGE_HOST, "www.kaggle.com")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(tls)
        self.ca_bundle = ca_dir / "standin-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_bundle))
        self.state = state
        self._server = _Server(state, tls)
        state.port = self._server.server_address[1]
        self.proxy_url = f"http://127.0.0.1:{state.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, cut every open connection, and wait for the serving thread to end."""
        self._server.shutdown()
        with self._server.lock:
            for sock in list(self._server.open_sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._server.server_close()
        self._thread.join(timeout=5)
