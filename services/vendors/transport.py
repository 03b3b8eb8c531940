"""HTTP to SMS vendors: pooled sessions, public addresses only, answers read within a bound.

A vendor URL (`baseUrl`) comes from an Emarsys client's onboarding form, so it is not trusted:
- a request reaches only a public address, checked on the connected socket, so neither a literal
  private address nor a name that resolves to one (at any time) reaches the internal network,
  unless the operator allows it (VENDOR_ALLOW_PRIVATE_ADDRESSES, for an on-premise vendor or tests);
- redirects are not followed, so a vendor cannot send the credentials on to another host;
- an answer is read up to MAX_ANSWER_BYTES, so a vendor cannot exhaust the worker's memory;
- a call ends by its deadline (connect plus read timeout), however slowly the vendor trickles
  bytes: requests' timeouts bound each read, not the call, and a send past its lease could be
  sent again by another worker;
- at most MAX_SESSIONS hosts keep pooled connections, so cycling hosts cannot exhaust sockets.
"""
from __future__ import annotations

import codecs
import heapq
import http.cookiejar
import ipaddress
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.exceptions
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

log = logging.getLogger(__name__)

USER_AGENT = "sms-status-middleware"
CONNECTIONS_PER_HOST = 64
MAX_SESSIONS = 32
# Twilio's lookup of an earlier attempt lists 100 messages of up to 1,600 characters each.
MAX_ANSWER_BYTES = 1024 * 1024

# What a call answers instead of a VendorAnswer when none could be had.
TIMEOUT = "timeout"
NETWORK = "network"
OVERSIZED = "oversized"
NOT_PUBLIC = "address_not_public"


class AddressNotPublic(Exception):
    """A vendor URL led to a loopback, private, link-local or otherwise non-public address.

    Not an OSError, so that urllib3 neither retries it nor hides it in a connection error.
    """


@dataclass
class AddressPolicy:
    """Whether vendor calls may reach non-public addresses; one per process, like the sessions."""

    allow_private: bool = False


ADDRESS_POLICY = AddressPolicy()


def allow_private_addresses(allowed: bool) -> None:
    """Let vendor calls reach loopback and private addresses, or refuse them (the default)."""
    ADDRESS_POLICY.allow_private = allowed


@dataclass(frozen=True)
class VendorAnswer:
    """A vendor's HTTP answer, read whole (at most MAX_ANSWER_BYTES)."""

    status_code: int
    content: bytes
    encoding: str | None = None

    @property
    def ok(self) -> bool:
        """Return whether the status is 2xx (a redirect, not followed, is no success)."""
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        """Return the body as text, in its declared charset if Python knows it, else UTF-8."""
        return self.content.decode(_known_codec(self.encoding), "replace")

    def json(self) -> Any:
        """Return the body parsed as JSON; raise ValueError if it is not JSON."""
        try:
            return json.loads(self.text)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def vendor_call(method: str, url: str, timeout: tuple[float, float], **kwargs: Any) -> VendorAnswer | str:
    """Make one vendor request; return its answer, or TIMEOUT, NETWORK, OVERSIZED or NOT_PUBLIC.

    The call as a whole ends within the sum of the connect and read timeouts.
    """
    with CallDeadline(whole_call_seconds(timeout)) as deadline:
        answer = _call(method, url, timeout, deadline, **kwargs)
    # Past the deadline its socket was shut: what was read may be cut short.
    return TIMEOUT if deadline.expired else answer


def _call(method: str, url: str, timeout: tuple[float, float], deadline: CallDeadline,
          **kwargs: Any) -> VendorAnswer | str:
    try:
        with session_for(url).request(method, url, timeout=timeout, allow_redirects=False, stream=True,
                                      **kwargs) as response:
            try:
                return _read_answer(response)
            finally:
                # Before the connection goes back to the pool, where another thread may take it.
                deadline.disarm()
    except AddressNotPublic as exc:
        log.warning("vendor request refused: %s is not a public address", exc)
        return NOT_PUBLIC
    # The body is read from urllib3 directly, so its faults arrive unwrapped by requests.
    except (requests.Timeout, urllib3.exceptions.TimeoutError):
        return TIMEOUT
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        log.warning("vendor request failed: %s", type(exc).__name__)
        return NETWORK


def _read_answer(response: requests.Response) -> VendorAnswer | str:
    content = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
    if len(content) > MAX_ANSWER_BYTES:
        log.warning("vendor answer refused: longer than %d bytes", MAX_ANSWER_BYTES)
        return OVERSIZED
    return VendorAnswer(response.status_code, content, response.encoding)


def _known_codec(name: str | None) -> str:
    try:
        return codecs.lookup(name).name if name else "utf-8"
    except LookupError:
        return "utf-8"


_current = threading.local()


class CallDeadline:
    """The time limit of one HTTP call on this thread: when it passes, the call's sockets are shut.

    Only sockets of connections made through DeadlineAdapter (every vendor session's) are shut.
    """

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds
        self.expired = False
        self.disarmed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CallDeadline:
        _current.deadline = self
        _WATCHDOG.add(self)
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.disarm()
        _current.deadline = None

    def disarm(self) -> None:
        """Stop watching the call's sockets: its connection may go back to the pool, to another call."""
        with self._lock:
            self.disarmed = True
            self._sockets.clear()

    def watch(self, sock: socket.socket) -> None:
        """Shut this socket when the deadline passes (at once, if it has)."""
        with self._lock:
            if self.disarmed:
                return
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def unwatch(self, sock: socket.socket | None) -> None:
        """Stop watching this socket: its connection goes back to the pool, to another call."""
        with self._lock:
            self._sockets = [watched for watched in self._sockets if watched is not sock]

    def expire(self) -> None:
        """Shut the call's sockets, unless it was disarmed first."""
        # Shut under the lock: once disarm() returns, no socket of this call is shut any more.
        with self._lock:
            if self.disarmed:
                return
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


class _Watchdog:
    """One thread that expires the deadlines of vendor calls, earliest first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, CallDeadline]] = []
        self._order = itertools.count()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: CallDeadline) -> None:
        """Expire this deadline when its time comes."""
        with self._wakeup:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="vendor-call-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is deadline:
                self._wakeup.notify()  # it is due before the one the thread sleeps for

    def reset_after_fork(self) -> None:
        """Start afresh in a forked child: the parent's thread and lock state do not carry over."""
        self.__init__()

    def _run(self) -> None:
        while True:
            with self._wakeup:
                deadline = self._next_due()
            deadline.expire()

    def _next_due(self) -> CallDeadline:
        # Most calls end long before their deadline: dropping those from the front as they are
        # found means the thread wakes about once a deadline's length, not once per call.
        while True:
            while self._heap and self._heap[0][2].disarmed:
                heapq.heappop(self._heap)
            if self._heap and self._heap[0][0] <= time.monotonic():
                return heapq.heappop(self._heap)[2]
            self._wakeup.wait(self._heap[0][0] - time.monotonic() if self._heap else None)


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.reset_after_fork)


def _watch_for_this_call(sock: socket.socket | None) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None and sock is not None:
        deadline.watch(sock)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for a TLS socket: a blocked read on another thread then
    # ends at once, and no TLS state is torn down under it.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


_sessions: OrderedDict[str, requests.Session] = OrderedDict()
_sessions_lock = threading.Lock()


def session_for(url: str) -> requests.Session:
    """Return the shared session for the URL's scheme, host and port."""
    parts = urlsplit(url)
    key = f"{parts.scheme}://{parts.hostname}:{parts.port}".lower()
    evicted = None
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = _new_session()
            if len(_sessions) > MAX_SESSIONS:
                evicted = _sessions.popitem(last=False)[1]
        _sessions.move_to_end(key)
    if evicted is not None:
        evicted.close()  # its idle sockets; a request in flight on it still completes
    return session


def close_sessions() -> None:
    """Close and forget every shared session (at shutdown, or between tests)."""
    with _sessions_lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for session in sessions:
        session.close()


def _new_session() -> requests.Session:
    session = requests.Session()
    # The session is shared by every client of a vendor host: a cookie one client's
    # credentials earned must never ride along with another client's request.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.headers["User-Agent"] = USER_AGENT
    # No proxy from the environment (nor .netrc credentials): a proxy would connect on our behalf,
    # out of reach of the public-address check.
    session.trust_env = False
    # Every send thread of the dispatcher (DISPATCH_CONCURRENCY) may call one host at once;
    # urllib3 keeps only pool_maxsize connections, and one over that is opened and thrown away.
    adapter = _PublicAddressAdapter(pool_connections=1, pool_maxsize=CONNECTIONS_PER_HOST)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def refuse_non_public_peer(sock: socket.socket) -> None:
    """Close the socket and raise AddressNotPublic if its peer is not public and that is not allowed."""
    if ADDRESS_POLICY.allow_private:
        return
    address = ipaddress.ip_address(sock.getpeername()[0])
    if not all(candidate.is_global for candidate in _with_embedded_ipv4(address)):
        sock.close()
        raise AddressNotPublic(str(address))


# IPv6 prefixes whose last 32 bits are an IPv4 address the packets end up at (NAT64, IPv4-translated,
# IPv4-compatible); Python calls most of them global whatever the IPv4 address inside.
_IPV4_CARRYING_PREFIXES = [ipaddress.ip_network(prefix) for prefix in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96")]


def _with_embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list:
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    embedded = [address.ipv4_mapped, address.sixtofour]
    embedded += [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
                 for prefix in _IPV4_CARRYING_PREFIXES if address in prefix]
    return [address, *(candidate for candidate in embedded if candidate is not None)]


class _DeadlineWatchedConnection:
    """A urllib3 connection that ends by the deadline of the call running on its thread (CallDeadline)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        self._check_peer(sock)
        _watch_for_this_call(sock)
        return sock

    def _check_peer(self, sock: socket.socket) -> None:
        pass  # any peer: the URL is the operator's, not a client's

    def request(self, *args: Any, **kwargs: Any) -> None:
        """Send a request; a pooled connection's socket is watched by this call's deadline."""
        _watch_for_this_call(getattr(self, "sock", None))
        super().request(*args, **kwargs)  # type: ignore[misc]


class _CheckedConnection(_DeadlineWatchedConnection):
    """A watched connection that reaches only public peers."""

    def _check_peer(self, sock: socket.socket) -> None:
        refuse_non_public_peer(sock)


class _WatchedHTTPConnection(_DeadlineWatchedConnection, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_DeadlineWatchedConnection, HTTPSConnection):
    pass


class _UnwatchingPool:
    """A pool that stops the deadline of the call returning a connection from watching its socket."""

    def _put_conn(self, conn: Any) -> None:
        """Unwatch the connection's socket for this thread's call, then pool the connection."""
        # urllib3 pools a connection as soon as an answer is read whole, inside the call: a
        # deadline passing after that would shut a socket that another thread has taken. Only
        # this socket: the call's later requests (a redirect followed) stay bounded.
        deadline = getattr(_current, "deadline", None)
        if deadline is not None and conn is not None:
            deadline.unwatch(getattr(conn, "sock", None))
        super()._put_conn(conn)  # type: ignore[misc]


class _WatchedHTTPPool(_UnwatchingPool, HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(_UnwatchingPool, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _PublicPeerHTTPConnection(_CheckedConnection, HTTPConnection):
    pass


class _PublicPeerHTTPSConnection(_CheckedConnection, HTTPSConnection):
    pass


class _PublicPeerHTTPPool(_UnwatchingPool, HTTPConnectionPool):
    ConnectionCls = _PublicPeerHTTPConnection


class _PublicPeerHTTPSPool(_UnwatchingPool, HTTPSConnectionPool):
    ConnectionCls = _PublicPeerHTTPSConnection


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with connections (also through an HTTP proxy) that a CallDeadline shuts."""

    pool_classes = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Build requests' pool manager, with pools of watched connections."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self.pool_classes)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """Return requests' proxy manager, with pools of watched connections."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # a SOCKS manager keeps pools of its own
            manager.pool_classes_by_scheme = dict(self.pool_classes)
        return manager


def bind_to_deadlines(session: requests.Session) -> requests.Session:
    """Make the session's new connections ones that a CallDeadline shuts; return the session.

    The session's http and https adapters are replaced, unless they are DeadlineAdapters already
    (one session shared by two callers keeps its pools).
    """
    adapter = DeadlineAdapter()
    for prefix in ("https://", "http://"):
        if not isinstance(session.adapters.get(prefix), DeadlineAdapter):
            session.mount(prefix, adapter)
    return session


class BearerToken(requests.auth.AuthBase):
    """An OAuth 2 bearer token for one request's Authorization header."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Set the request's Authorization header to the bearer token."""
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


def _unchanged(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def ignore_netrc(session: requests.Session) -> requests.Session:
    """Keep ~/.netrc credentials off the session's requests (proxies from the environment still apply)."""
    # requests reads .netrc for a request with no auth of its own or of its session's, and again for
    # each redirect it follows; what it finds would replace a bearer header and reach a third party.
    if session.auth is None:
        session.auth = _unchanged

    def strip_only(prepared: requests.PreparedRequest, response: requests.Response) -> None:
        # requests' own rebuild_auth, less its .netrc look-up: credentials leave for another host.
        leaves = session.should_strip_auth(response.request.url, prepared.url)
        if leaves and "Authorization" in prepared.headers:
            del prepared.headers["Authorization"]

    session.rebuild_auth = strip_only
    return session


def whole_call_seconds(timeout: float | tuple[float, float]) -> float:
    """Return the time one call may take in all: its connect and read timeouts together."""
    return sum(timeout) if isinstance(timeout, tuple) else timeout * 2


def request_within(session: requests.Session, seconds: float, method: str, url: str,
                   **kwargs: Any) -> requests.Response:
    """Make one request whose whole answer arrives within `seconds`, or raise requests.Timeout.

    requests' own timeout bounds each socket read, so a peer that trickles its answer could hold
    the call for ever. The body is read before return; only a DeadlineAdapter's sockets are shut.
    """
    with CallDeadline(seconds) as deadline:
        try:
            with session.request(method, url, stream=True, **kwargs) as response:
                try:
                    response.content  # noqa: B018 - read it all while the deadline watches
                finally:
                    # Before the connection goes back to the pool, where a later call takes it.
                    deadline.disarm()
        except requests.RequestException:
            if not deadline.expired:
                raise
    # Past the deadline the socket was shut: what was read may be cut short.
    if deadline.expired:
        raise requests.Timeout(f"no whole answer within {seconds:g}s")
    return response


class _PublicAddressAdapter(DeadlineAdapter):
    """The deadline adapter, with connections that also check the address they reached."""

    pool_classes = {"http": _PublicPeerHTTPPool, "https": _PublicPeerHTTPSPool}
