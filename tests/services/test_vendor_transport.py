"""Vendor HTTP against untrusted vendor URLs: public addresses only, no redirects, bounded answers."""
from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests
import urllib3.exceptions
from werkzeug import Response

from mappers.report import ErrorType, Outcome
from services import vendors
from services.vendors import transport
from tests.services.test_vendor_senders import (GENESYS_PATH, MESSAGE, TIMEOUT, TWILIO_MESSAGES, genesys_config,
                                                twilio_config)
from tests.trickling_server import serve_trickling


class PeerSocket:
    """Just enough of a connected socket for the peer check."""

    def __init__(self, address: str) -> None:
        self.address, self.closed = address, False

    def getpeername(self) -> tuple:
        """Return the peer as socket.getpeername does."""
        return (self.address, 443)

    def close(self) -> None:
        """Remember that the check closed the socket."""
        self.closed = True


@pytest.fixture
def public_only():
    """Refuse non-public addresses, as the service does unless the operator allows them."""
    vendors.close_sessions()
    transport.allow_private_addresses(False)
    yield
    vendors.close_sessions()


@pytest.mark.parametrize("address, public", [
    ("127.0.0.1", False),
    ("10.1.2.3", False),
    ("172.16.0.1", False),
    ("192.168.1.1", False),
    ("169.254.169.254", False),  # cloud metadata
    ("100.64.0.1", False),  # carrier-grade NAT
    ("0.0.0.0", False),
    ("::1", False),
    ("::ffff:127.0.0.1", False),
    ("fe80::1", False),
    ("fd00::1", False),
    ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
    ("64:ff9b::a9fe:a9fe", False),  # NAT64 of it
    ("::ffff:0:a9fe:a9fe", False),  # IPv4-translated
    ("::a9fe:a9fe", False),  # IPv4-compatible
    ("64:ff9b::808:808", True),  # NAT64 of a public address
    ("8.8.8.8", True),
    ("2001:4860:4860::8888", True),
])
def test_only_a_public_peer_passes(public_only, address, public):
    sock = PeerSocket(address)
    if public:
        transport.refuse_non_public_peer(sock)
    else:
        with pytest.raises(transport.AddressNotPublic):
            transport.refuse_non_public_peer(sock)
    assert sock.closed is not public


def test_the_operator_can_allow_private_peers(public_only):
    sock = PeerSocket("10.0.0.5")
    with pytest.raises(transport.AddressNotPublic):
        transport.refuse_non_public_peer(PeerSocket("10.0.0.5"))  # refused until allowed

    transport.allow_private_addresses(True)
    transport.refuse_non_public_peer(sock)

    assert not sock.closed


@pytest.mark.parametrize("config_for, path", [(genesys_config, GENESYS_PATH), (twilio_config, "/")])
def test_a_send_to_a_private_address_fails_for_good_without_reaching_it(public_only, httpserver, config_for, path):
    httpserver.expect_request("/", method="POST").respond_with_data("result_code=0")
    # localhost, not the IP: a name that resolves to loopback is refused as well.
    url = httpserver.url_for(path).replace("127.0.0.1", "localhost")

    result = vendors.send_message(config_for(url), MESSAGE, "our-1", None, TIMEOUT)

    assert (result.outcome, result.error_type, result.retry) == (Outcome.ERROR, ErrorType.UNKNOWN, False)
    assert result.status_code == "address_not_public"
    assert httpserver.log == []


@pytest.mark.parametrize("config_for", [genesys_config, twilio_config])
def test_a_connection_test_of_a_private_address_is_an_integration_error(public_only, httpserver, config_for):
    result = vendors.test_connection(config_for(httpserver.url_for(GENESYS_PATH)), TIMEOUT)

    assert (result.state, result.error_type) == ("error", "integration")
    assert "public" in result.description
    assert httpserver.log == []


@pytest.mark.parametrize("config_for, path, status", [
    (genesys_config, GENESYS_PATH, 307), (twilio_config, TWILIO_MESSAGES, 302)])
def test_a_redirect_is_not_followed_and_not_a_success(httpserver, config_for, path, status):
    httpserver.expect_request(path).respond_with_response(
        Response("result_code=0", status=status, headers={"Location": httpserver.url_for("/elsewhere")}))
    httpserver.expect_request("/elsewhere").respond_with_data("result_code=0")
    base_url = httpserver.url_for(path if config_for is genesys_config else "/")

    result = vendors.send_message(config_for(base_url), MESSAGE, "our-1", None, TIMEOUT)

    assert (result.outcome, result.status_code) == (Outcome.ERROR, f"http_{status}")
    assert [entry[0].path for entry in httpserver.log] == [path]


def test_an_oversized_answer_is_retried_not_read_whole(httpserver, monkeypatch):
    monkeypatch.setattr(transport, "MAX_ANSWER_BYTES", 1000)
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0" + " " * 5000)

    config = genesys_config(httpserver.url_for(GENESYS_PATH))

    result = vendors.send_message(config, MESSAGE, "our-1", None, TIMEOUT)

    assert (result.outcome, result.retry, result.status_code) == (None, True, "oversized")


def test_an_answer_within_the_bound_is_read_whole(httpserver):
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_json(
        {"sid": "SM" + "0" * 32, "status": "queued", "padding": "x" * 500_000}, status=201)

    result = vendors.send_message(twilio_config(httpserver.url_for("/")), MESSAGE, "our-1", None, TIMEOUT)

    assert (result.outcome, result.vendor_message_id) == (Outcome.ACCEPTED, "SM" + "0" * 32)


def test_a_deeply_nested_json_answer_is_no_crash(httpserver):
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_data("[" * 100_000, status=400,
                                                                 content_type="application/json")

    result = vendors.send_message(twilio_config(httpserver.url_for("/")), MESSAGE, "our-1", None, TIMEOUT)

    assert (result.outcome, result.status_code) == (Outcome.ERROR, "http_400")


def test_the_session_cache_keeps_the_most_recent_hosts_and_closes_the_rest():
    vendors.close_sessions()
    first = vendors.session_for("https://host-0.example.com/")
    closed = []
    first.close = lambda: closed.append(True)  # type: ignore[method-assign]

    for number in range(1, transport.MAX_SESSIONS + 5):
        vendors.session_for(f"https://host-{number}.example.com/")

    assert len(transport._sessions) == transport.MAX_SESSIONS
    assert closed == [True]
    assert vendors.session_for("https://host-0.example.com/") is not first
    vendors.close_sessions()


def test_a_recently_used_host_stays_cached():
    vendors.close_sessions()
    busy = vendors.session_for("https://busy.example.com/")
    for number in range(transport.MAX_SESSIONS + 5):
        vendors.session_for(f"https://host-{number}.example.com/")
        assert vendors.session_for("https://busy.example.com/") is busy
    vendors.close_sessions()



@pytest.mark.parametrize("scheme", ["http", "https"])
def test_both_schemes_check_the_peer_before_sending(public_only, scheme):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/"

        assert transport.vendor_call("POST", url, (TIMEOUT, TIMEOUT), data={"password": "x"}) == transport.NOT_PUBLIC


def test_no_proxy_from_the_environment_connects_on_our_behalf(httpserver, monkeypatch):
    httpserver.expect_request("/", method="GET").respond_with_data("proxied")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, httpserver.url_for("/"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    vendors.close_sessions()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/"

    assert transport.vendor_call("GET", url, (TIMEOUT, TIMEOUT)) == transport.NETWORK
    assert httpserver.log == []


def serve_once(answer: bytes, then_wait: float) -> str:
    """Answer one request on loopback with these raw bytes, then hold the connection; return the URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer_once() -> None:
        """Read the request, write the answer, wait, close."""
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(answer)
        time.sleep(then_wait)
        connection.close()
        listener.close()

    threading.Thread(target=answer_once, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/"


@pytest.mark.parametrize("answer, then_wait, failure", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nresult_code=0", 1.0, transport.TIMEOUT),  # body stalls
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nresult_code=0", 0.0, transport.NETWORK),  # body cut short
])
def test_a_body_that_stalls_or_breaks_off_is_a_transport_failure(answer, then_wait, failure):
    url = serve_once(answer, then_wait)

    assert transport.vendor_call("POST", url, (1.0, 0.3), data={"a": "b"}) == failure


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n"


@pytest.mark.parametrize("answer", [
    [OK_HEAD, b"result_code=0"],  # the body trickles
    # the headers do
    [b"HTTP/1.1 200 OK\r\n", b"Content-Length: 13\r\nX-Slow: " + b"y" * 20 + b"\r\n\r\nresult_code=0"],
])
def test_a_vendor_trickling_its_answer_is_cut_off_at_the_calls_deadline(answer):
    # Each byte comes within the read timeout, so only a deadline on the whole call ends it.
    url = serve_trickling([answer])
    started = time.monotonic()

    assert transport.vendor_call("POST", url, (0.5, 0.5), data={"a": "b"}) == transport.TIMEOUT
    assert time.monotonic() - started < 3.0  # the trickle alone would take about 4 s more


def test_a_pooled_connection_is_cut_off_at_the_deadline_too():
    url = serve_trickling([[OK_HEAD + b"result_code=0"], [OK_HEAD, b"result_code=0"]])
    pool = transport._PublicPeerHTTPPool("127.0.0.1", urlsplit(url).port, maxsize=1, timeout=0.5, retries=False)
    assert pool.urlopen("POST", "/", body=b"a=b").data == b"result_code=0"  # read whole: back in the pool
    started = time.monotonic()

    with transport.CallDeadline(1.0) as deadline, pytest.raises(urllib3.exceptions.HTTPError):
        pool.urlopen("POST", "/", body=b"a=b").data

    assert deadline.expired and time.monotonic() - started < 3.0
    assert pool.num_connections == 1  # the second request did go over the pooled connection


def test_a_finished_calls_deadline_never_cuts_the_next_call_on_its_pooled_connection():
    # The first call's deadline passes while the second, on the same kept-alive connection, waits
    # for its answer: the first call disarmed its deadline before the connection was pooled.
    url = serve_trickling([[OK_HEAD + b"result_code=0"], [OK_HEAD + b"result", b"_code=0"]], gap=0.2)
    first = transport.vendor_call("POST", url, (0.3, 0.3), data={"a": "b"})
    second = transport.vendor_call("POST", url, (2.0, 2.0), data={"a": "b"})  # answered over 1.2 s

    assert (first.text, second.text) == ("result_code=0", "result_code=0")


def test_a_deadline_passing_after_its_connection_is_pooled_shuts_nothing():
    # urllib3 pools the connection once the answer is read whole, before the call returns: if the
    # watchdog fires then, it must not shut a socket another call may already be using.
    url = serve_trickling([[OK_HEAD + b"result_code=0"], [OK_HEAD + b"result", b"_code=0"]], gap=0.2)
    pool = transport._PublicPeerHTTPPool("127.0.0.1", urlsplit(url).port, maxsize=1, timeout=2.0, retries=False)
    with transport.CallDeadline(60) as first:
        assert pool.urlopen("POST", "/", body=b"a=b").data == b"result_code=0"
        first.expire()  # the watchdog, between the pooling and the end of the call

    assert pool.urlopen("POST", "/", body=b"a=b").data == b"result_code=0"
    assert pool.num_connections == 1  # the same kept-alive connection, not shut


def test_a_disarmed_deadline_shuts_nothing_and_an_expired_one_shuts_what_it_is_given():
    kept, kept_peer = socket.socketpair()
    cut, cut_peer = socket.socketpair()
    disarmed, expired = transport.CallDeadline(60), transport.CallDeadline(60)
    disarmed.watch(kept)
    disarmed.disarm()
    disarmed.expire()
    expired.expire()
    expired.watch(cut)

    kept_peer.sendall(b"x")
    assert kept.recv(1) == b"x" and not disarmed.expired
    assert cut.recv(1) == b"" and expired.expired
    for sock in (kept, kept_peer, cut, cut_peer):
        sock.close()


def test_a_call_within_its_deadline_is_answered_whole():
    url = serve_trickling([[OK_HEAD, b"result_code=0"]], gap=0.01)

    answer = transport.vendor_call("POST", url, (0.5, 0.5), data={"a": "b"})

    assert (answer.status_code, answer.text) == (200, "result_code=0")


def test_a_session_bound_to_deadlines_twice_keeps_its_pools():
    session = transport.bind_to_deadlines(requests.Session())
    adapter = session.get_adapter("https://emarsys.example/")

    transport.bind_to_deadlines(session)

    assert isinstance(adapter, transport.DeadlineAdapter)
    assert session.get_adapter("https://emarsys.example/") is adapter
    assert session.get_adapter("http://emarsys.example/") is adapter
