"""One WSGI response: start_response, write(), the iterable, framing, close().

Why this module exists: PEP 3333 puts most of its rules on the server side of
the response, and each one is a way to hang or confuse a client if it is
missed: headers go out with the first non-empty chunk (not before, so an app
can still turn its response into an error); an app's ``Content-Length`` is
a promise that must be kept (a short body closes the connection instead of
leaving the client waiting for bytes that never come); without one the body
is chunked on HTTP/1.1 and close-delimited on HTTP/1.0; HEAD, 204 and 304
carry no body (and HEAD no ``Content-Length`` unless it is GET's: a
streaming GET has none to give); 1xx and hop-by-hop headers are the
server's business (an app that sends them gets a 500; ``100 Continue`` goes
out at the first body read); a request body that turned out malformed or
over ``--max-body-size`` while the app read it is answered 400 or 413
whatever the app made of the exception (a framework turns it into its own
500), or, once the head is out, ends the connection; and the iterable's
``close()`` runs whatever happened.

Speed: a list or tuple result (the common ``return [body]``) is sent with a
computed ``Content-Length`` in one ``sendall`` with the head; a
``wsgi.file_wrapper`` around a regular file goes out with ``socket.sendfile``.

Threading contract: a Response belongs to its connection's thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import stat
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from graceserve.core.connection import format_address
from graceserve.http.body import Body
from graceserve.http.parse import TCHAR, Framing, IncompleteBodyError, RequestError, RequestLine


class ResponseServer(Protocol):
    """What a response reads of the server."""

    @property
    def server_software(self) -> str: ...


class ResponseConnection(Protocol):
    """What a response asks of its connection (``wsgihandler.WSGIConnection`` has it all).
    Used from the connection's own thread only."""

    closing: bool
    """Set: the connection ends after this response."""

    @property
    def server(self) -> ResponseServer: ...

    @property
    def request(self) -> socket.socket:
        """The connection's socket."""

    @property
    def client_address(self) -> Any: ...

    def client_text(self) -> str:
        """The client's address, for log lines."""

    def date(self) -> str:
        """The ``Date`` header value."""

    def ending(self) -> bool:
        """Whether the connection ends after this response (the drain, a race, a body)."""

    def send_error(self, status: int, message: str, version: str = "HTTP/1.1") -> None:
        """Answer with an error of our own and end the connection."""

    def log_app_error(self, environ: dict[str, Any], what: str) -> None:
        """Log the exception being handled, once, with its traceback."""


__all__ = ["FileWrapper", "Response"]

log = logging.getLogger("graceserve")

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_TOKEN = frozenset(c for c in map(chr, range(128)) if re.fullmatch(f"[{TCHAR}]", c))
_BAD_IN_VALUE = frozenset(chr(c) for c in range(32) if c != 9) | {"\x7f"}
_INTERNAL_ERROR = b"Internal Server Error\n"
_ERROR_HEADERS = [("Content-Type", "text/plain; charset=utf-8")]
_ERROR_KEY = tuple(_ERROR_HEADERS)
_ERROR_BLOCK = b"Content-Type: text/plain; charset=utf-8\r\n"
_LATIN_1 = "status and header values must be latin-1 (PEP 3333)"

# What start() found of a status or header list it checked before: apps pass the same
# few over and over (``list(HEADERS)``), and checking one costs more than serving the
# rest of a small request.  Only exact str/tuple/list objects are remembered, and a hit
# sends the bytes encoded from the checked copy.  Bounded: the values are app-chosen
# (a header per user, a date): past the bound a new one is checked every time.  Shared
# by every thread: a dict's get and set are atomic; two threads that check the same
# new list at once both store the same result.
_MAX_CACHED = 512
_checked_status: dict[str, tuple[int, bytes | None]] = {}
"""status -> its code, and its status line encoded (None: not latin-1)."""
_checked_headers: dict[
    tuple[tuple[str, str], ...], tuple[int | None, bool, bool, bytes | None]
] = {}
"""headers -> (Content-Length, has Date, has Server, the lines encoded; None: not latin-1)."""
_stamp: tuple[str, str, bytes] = ("", "", b"")
"""(date, server software, their two header lines encoded): changes once a second."""

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _latin_1(text: str) -> bytes | None:
    """``text`` encoded for the wire, or None when it is not latin-1."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None


def _check_status(status: Any) -> tuple[int, bytes | None]:
    """Check a ``start_response`` status (PEP 3333); its code and encoded status line."""
    if not isinstance(status, str):
        raise TypeError(f"status must be a str, not {type(status).__name__}")
    if len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
        raise ValueError(f"status {status!r} is not '<3 digits> <reason>'")
    if not _BAD_IN_VALUE.isdisjoint(status):
        raise ValueError(f"status {status!r} contains a control character")
    if status[0] == "1":  # a client would wait for the final response that never comes
        raise ValueError(f"status {status!r}: interim (1xx) responses are the server's")
    known = int(status[:3]), _latin_1(f"HTTP/1.1 {status}\r\n")
    if type(status) is str and len(_checked_status) < _MAX_CACHED:
        _checked_status[status] = known
    return known


def _check_headers(headers: Any) -> tuple[int | None, bool, bool, bytes | None]:
    """Check a ``start_response`` header list (PEP 3333): its Content-Length, whether it
    has Date and Server, and its lines encoded."""
    if not isinstance(headers, list):
        raise TypeError(f"headers must be a list, not {type(headers).__name__}")
    length: int | None = None
    has_date = has_server = False
    exact = type(headers) is list
    for header in headers:
        if not isinstance(header, tuple) or len(header) != 2:
            raise TypeError(f"header {header!r} is not a (name, value) tuple")
        name, value = header
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header {header!r}: name and value must be str")
        lower = name.lower()
        if not name or not _TOKEN.issuperset(name):
            raise ValueError(f"header name {name!r} is not a token")
        if not _BAD_IN_VALUE.isdisjoint(value):
            raise ValueError(f"header {name}: value {value!r} contains CR, LF or a control")
        if lower in _HOP_BY_HOP:
            raise ValueError(f"hop-by-hop header {name!r} is the server's business (PEP 3333)")
        if lower == "content-length":
            if not value.isdigit() or not value.isascii() or length is not None:
                raise ValueError(f"Content-Length {value!r} is not one non-negative integer")
            length = int(value)
        elif lower == "date":
            has_date = True
        elif lower == "server":
            has_server = True
        exact = exact and type(header) is tuple and type(name) is str and type(value) is str
    block = _latin_1("".join(f"{name}: {value}\r\n" for name, value in headers))
    checked = length, has_date, has_server, block
    if exact and len(_checked_headers) < _MAX_CACHED:
        _checked_headers[tuple(headers)] = checked
    return checked


class ClientGoneError(Exception):
    """Sending failed: the client went away, or the drain cut the connection."""


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file in blocks; sent with ``sendfile`` when possible.

    The server recognises its own wrapper around a regular file opened in
    binary mode and hands the file to ``socket.sendfile`` (zero copy); any
    other file-like object is read in ``block_size`` pieces.
    """

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.block_size)
            if not block:
                return
            yield block


class Response:
    """The state of one response; ``start`` is the app's ``start_response``."""

    __slots__ = (
        "block",
        "body",
        "chunked",
        "close_delimited",
        "code",
        "connection",
        "continue_sent",
        "framing",
        "has_date",
        "has_server",
        "head_only",
        "headers",
        "headers_key",
        "headers_sent",
        "length",
        "no_body",
        "sent",
        "status",
        "status_line",
        "version",
    )

    def __init__(self, connection: ResponseConnection, request_line: RequestLine, framing: Framing):
        self.connection = connection
        self.version = request_line.version
        self.head_only = request_line.method == "HEAD"
        self.framing = framing
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.headers_key: tuple[tuple[str, str], ...] | None = None  # ``headers`` as checked
        self.code = 0  # the status's, once started
        self.status_line: bytes | None = None  # encoded (None: not latin-1, or not started)
        self.block: bytes | None = None  # the header lines encoded (None: not latin-1)
        self.headers_sent = False
        self.length: int | None = None  # the app's Content-Length
        self.has_date = self.has_server = False
        self.sent = 0  # body bytes sent
        self.chunked = False
        self.no_body = False
        self.close_delimited = False
        self.continue_sent = False
        self.body: Body | None = None  # the request body, if the request has one

    # -- the callables the app gets -----------------------------------------

    def start(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        """PEP 3333 ``start_response``: check status and headers, keep them until the body."""
        if exc_info is not None:
            try:
                if self.headers_sent:  # too late to change the status: back to the app
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        known = _checked_status.get(status) if type(status) is str else None
        if known is None:
            known = _check_status(status)
        checked = key = None
        if type(headers) is list:
            try:
                key = tuple(headers)
                checked = _checked_headers.get(key)
            except TypeError:  # an unhashable item: the check says what is wrong with it
                checked = key = None
        if checked is None:
            checked = _check_headers(headers)
        self.status, self.headers, self.headers_key = status, headers, key
        self.code, self.status_line = known
        self.length, self.has_date, self.has_server, self.block = checked
        return self.write

    def write(self, data: bytes) -> None:
        """The PEP 3333 ``write()`` callable: send now (headers first if needed)."""
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if data:
            self.send_chunk(data)

    def send_continue(self) -> None:
        """Answer ``Expect: 100-continue``: called by the body at the app's first read."""
        if not self.headers_sent and not self.continue_sent:
            self.continue_sent = True
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- running the app ------------------------------------------------------

    def run(self, app: Any, environ: dict[str, Any], start_response: Any) -> bool:
        """Call the app, send its response, close its iterable; True to keep the connection."""
        result: Any = None
        try:
            try:
                result = app(environ, start_response)
                self.send_result(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except ClientGoneError:
            return False
        except IncompleteBodyError as exc:
            log.debug("client went away in the middle of its request body: %s", exc)
            return False
        except RequestError as exc:  # a malformed or oversized request body, met by the app
            self._refuse(exc)
            return False
        except Exception:
            refusal = self._refusal()
            if refusal is not None:  # the app's error is the body's: say what it was
                self._refuse(refusal)
                return False
            if self.headers_sent:
                self.connection.log_app_error(environ, "application error after the headers")
                return False
            self.connection.log_app_error(environ, "application error")
            self.status, self.headers, self.length = "500 Internal Server Error", [], None
            self.code, self.status_line = 500, b"HTTP/1.1 500 Internal Server Error\r\n"
            self.has_date = self.has_server = False
            self.no_body, self.chunked, self.close_delimited = self.head_only, False, False
            self.headers.extend(_ERROR_HEADERS)
            self.headers_key, self.block = _ERROR_KEY, _ERROR_BLOCK
            try:
                self._send(
                    self.head(len(_INTERNAL_ERROR)) + (b"" if self.no_body else _INTERNAL_ERROR)
                )
            except ClientGoneError:
                return False
            return not self.connection.closing
        return self.finish()

    def send_result(self, result: Iterable[bytes]) -> None:
        """Send the app's iterable: all of it, or up to the headers for HEAD."""
        if type(result) in (list, tuple) and not self.headers_sent and self.status is not None:
            body = b"".join(result)  # a TypeError for str items: a 500
            head = self.head(len(body))
            self._send(head if self.no_body else head + self._frame(body))
            return
        if (
            type(result) is FileWrapper
            and not self.headers_sent
            and self.status is not None
            and self._sendfile(result)
        ):
            return
        for chunk in result:
            if type(chunk) is not bytes:
                raise TypeError(f"the application yielded {type(chunk).__name__}, not bytes")
            if chunk:
                self.send_chunk(chunk)
                if self.no_body:
                    return  # HEAD: the headers are out, the rest would be dropped anyway
        if not self.headers_sent:
            if self.status is None:
                raise AssertionError("the application returned without calling start_response()")
            self._send(self.head(0))

    def send_chunk(self, data: bytes) -> None:
        """Send one non-empty body chunk, after the head if it is not out yet."""
        if not self.headers_sent:
            head = self.head(None)
            self._send(head if self.no_body else head + self._frame(data))
        elif not self.no_body:
            self._send(self._frame(data))

    def _refusal(self) -> RequestError | None:
        """The error the request body failed with, if it is the client's fault (400, 413)."""
        body = self.body
        error = body.error if body is not None else None
        return error if isinstance(error, RequestError) else None

    def _refuse(self, error: RequestError) -> None:
        """Answer a request whose body was refused: its status, or (head out) one log line."""
        if not self.headers_sent:
            self.connection.send_error(error.status, error.message)
            return
        log.info(
            "%s: request body refused after the response began (%d %s); closing",
            self.connection.client_text(), error.status, error.message,
        )  # fmt: skip

    def finish(self) -> bool:
        """End the body; True if the connection can carry another request."""
        connection = self.connection
        if self.body is not None:
            refusal = self._refusal()
            if refusal is not None:  # the app swallowed it and went on: the framing is lost
                self._refuse(refusal)
                return False
        if self.no_body:
            return not connection.closing
        if self.length is not None and self.sent < self.length:
            log.warning(
                "response to %s declared Content-Length %d but sent %d bytes; closing",
                connection.client_text(), self.length, self.sent,
            )  # fmt: skip
            return False
        if self.chunked:
            try:
                self._send(b"0\r\n\r\n")
            except ClientGoneError:
                return False
        return not (self.close_delimited or connection.closing)

    # -- framing ------------------------------------------------------------

    def head(self, body_length: int | None) -> bytes:
        """The response head; decides the framing.  ``body_length`` is known, or None.

        Raises the request body's RequestError if it failed with one: the app's
        response (its own 500, or a success built on a body it did not get
        whole) is replaced by that status.
        """
        if self.body is not None:
            refusal = self._refusal()
            if refusal is not None:
                raise refusal
        assert self.status is not None
        headers = self.headers
        if self.headers_key is None or tuple(headers) != self.headers_key:
            # Changed since start_response (or not a plain list): what goes out is checked.
            self.length, self.has_date, self.has_server, self.block = _check_headers(headers)
        code = self.code
        connection = self.connection
        pieces = [self.status_line, self.block]  # None: not latin-1 (raised once framed)
        if code == 204 or code == 304:
            self.no_body = True
        elif self.head_only:
            self.no_body = True
            # What GET would say, when the app gave a body to measure.  An empty
            # one says nothing: a framework answers HEAD with no body even where
            # GET streams one (RFC 9110 8.6: no Content-Length but GET's).
            if self.length is None and body_length:
                pieces.append(b"Content-Length: %d\r\n" % body_length)
        elif self.length is not None:
            pass
        elif body_length is not None:
            self.length = body_length
            pieces.append(b"Content-Length: %d\r\n" % body_length)
        elif self.version == "HTTP/1.1":
            self.chunked = True
            pieces.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.close_delimited = True
            connection.closing = True
        if not self.has_date or not self.has_server:
            pieces.append(self._stamp(connection))
        if connection.ending():  # the drain, a raced request, an unread body (the cycle)
            pieces.append(b"Connection: close\r\n\r\n")
        elif self.version == "HTTP/1.0":
            pieces.append(b"Connection: keep-alive\r\n\r\n")
        else:
            pieces.append(b"\r\n")
        if None in pieces:
            raise ValueError(_LATIN_1)
        self.headers_sent = True  # from here on the status can no longer change
        return b"".join(pieces)  # type: ignore[arg-type]

    def _stamp(self, connection: ResponseConnection) -> bytes | None:
        """The ``Date`` and ``Server`` lines the app did not send, encoded (None: not
        latin-1); both together are made once a second."""
        global _stamp
        if self.has_date or self.has_server:
            lines = "" if self.has_date else f"Date: {connection.date()}\r\n"
            if not self.has_server:
                lines += f"Server: {connection.server.server_software}\r\n"
            return _latin_1(lines)
        date, software = connection.date(), connection.server.server_software
        stamp = _stamp
        if stamp[0] != date or stamp[1] != software:
            encoded = _latin_1(f"Date: {date}\r\nServer: {software}\r\n")
            if encoded is None:
                return None
            stamp = _stamp = (date, software, encoded)
        return stamp[2]

    def _frame(self, data: bytes) -> bytes:
        """One chunk of body as it goes on the wire; counts it against Content-Length."""
        if self.length is not None:
            room = self.length - self.sent
            if len(data) > room:
                if room >= 0:
                    log.warning(
                        "response to %s sent more than its Content-Length %d; "
                        "the rest is dropped and the connection closed",
                        self.connection.client_text(), self.length,
                    )  # fmt: skip
                self.connection.closing = True
                data = data[: max(room, 0)]
                self.sent = self.length + 1  # reported once
            else:
                self.sent += len(data)
            return data
        self.sent += len(data)
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def _send(self, data: bytes) -> None:
        if not data:
            return
        try:
            self.connection.request.sendall(data)
        except OSError as exc:
            raise self._gone(exc) from None

    def _gone(self, exc: OSError) -> ClientGoneError:
        """What a failed send means; a stalled one (the server's write bound) is logged."""
        if isinstance(exc, (BlockingIOError, TimeoutError)):
            log.info(
                "%s: response write stalled (the client stopped reading); closing",
                format_address(self.connection.client_address),
            )
        return ClientGoneError(str(exc))

    def _sendfile(self, wrapper: FileWrapper) -> bool:
        """Send a regular file with ``socket.sendfile``; False to fall back to iteration."""
        filelike = wrapper.filelike
        try:
            if "b" not in getattr(filelike, "mode", "b"):
                return False
            fd = filelike.fileno()
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return False
            offset = filelike.tell() if hasattr(filelike, "tell") else 0
        except (AttributeError, OSError, ValueError):
            return False
        size = max(info.st_size - offset, 0)
        count = size if self.length is None else min(size, self.length)
        self._send(self.head(count))
        if self.no_body or not count:
            return True
        sock = self.connection.request
        # socket.sendfile waits for ever on a blocking socket that the client stopped
        # reading (it retries EAGAIN): a timeout for this call bounds it as other writes.
        idle_timeout = getattr(self.connection.server, "idle_timeout", None)
        before = sock.gettimeout()
        try:
            if idle_timeout and before is None:
                sock.settimeout(idle_timeout)
            sent = sock.sendfile(filelike, offset, count)
        except OSError as exc:
            raise self._gone(exc) from None
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(before)
        self.sent += sent
        return True
