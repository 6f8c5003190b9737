"""HMAC signatures as OnePoint/DIY's reference signer computes them, and forwarded ports.

OnePoint's signature scheme comes from an ASP.NET Web API sample whose client signs

    AppId + METHOD + HttpUtility.UrlEncode(Uri.AbsoluteUri.ToLower()) + Timestamp + Nonce
    + (the request has content ? Base64(MD5(content)) : "")

with HMAC (SHA-256, Base64-decoded key) and sends ``AppId:Base64(mac):Nonce:Timestamp``.
:func:`reference_signature` below redoes that step by step, deliberately plainly (one
character at a time, .NET's rules spelled out), independent of receiver's encoder: every
request here is signed by it and checked by a real app through Starlette's TestClient.

The URL the sender signs is its ``Uri.AbsoluteUri``: scheme and host in lower case, the
scheme's default port left out, the path and query exactly as the request line carries
them (the client writes the request line from the same Uri). Each case below states it
literally.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import pytest
from samples import PAYLOADS
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import Channel, Config, create_app
from receiver.auth import CallbackRequest
from receiver.providers import DiyProvider
from receiver.providers.onepoint_signature import HmacCheck, lower_url_encode

BODY = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()
DIY_QUERY = (PAYLOADS / "diy" / "message_inbound.query").read_text().strip()

APP_ID = "a41c0de5e0f94b7f8d2b8e6c1f3a9d07"
OTHER_APP_ID = "b52d1ef6f1a05c8a9e3c9f7d2a4bae18"
# Base64 keys as the reference generates them (32 random bytes); made up for these tests.
SECRET = base64.b64encode(hashlib.sha256(b"receiver test key 1").digest()).decode()
OTHER_SECRET = base64.b64encode(hashlib.sha256(b"receiver test key 2").digest()).decode()
TEXT_SECRET = "s3cr3t-téxt-9f2d41c7"
NONCE = "6b9f0e3c2d7a4e1f8c5b0a9d3e7f1c2b"
TIMESTAMP = str(int(time.time()))  # the check refuses a Timestamp out of its window


@pytest.fixture(autouse=True)
def _verified_at_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier's clock at :data:`TIMESTAMP` (the signatures' defaults were made with
    it at import): the suite may reach these tests more than the check's window after."""
    from receiver.providers import onepoint_signature

    monkeypatch.setattr(onepoint_signature, "now", lambda: float(TIMESTAMP))


# A DIY GET is a callback (not a URL check) when its query has callback fields.
Q = "Type=Receipt&MessageID=MS1&Status=Delivered"

REFERENCE = {"hmac_hash": "sha256", "hmac_key_encoding": "base64", "hmac_body": "md5"}


# --------------------------------------------------------------------------- the reference

# HttpUtility.IsUrlSafeChar: ASCII letters and digits and these seven.
URL_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!*()"
LOWER_HEX = "0123456789abcdef"


def http_utility_url_encode(text: str) -> str:
    """System.Web.HttpUtility.UrlEncode(text): its UTF-8 bytes, one at a time."""
    out = []
    for byte in text.encode("utf-8"):
        if byte < 0x80 and chr(byte) in URL_SAFE:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append("%" + LOWER_HEX[byte >> 4] + LOWER_HEX[byte & 0x0F])
    return "".join(out)


def reference_signature(
    *,
    method: str,
    absolute_uri: str,
    content: bytes | None,
    app_id: str = APP_ID,
    secret: str = SECRET,
    nonce: str = NONCE,
    timestamp: str = TIMESTAMP,
    hmac_hash: str = "sha256",
    hmac_key_encoding: str = "base64",
    hmac_body: str = "md5",
) -> str:
    """The reference client's signature; ``content`` None: a request without content.

    ``hmac_hash``, ``hmac_key_encoding`` and ``hmac_body`` vary the parts receiver lets a
    channel choose (the reference: sha256, base64, md5).
    """
    request_uri = http_utility_url_encode(absolute_uri.lower())
    content_part = ""
    if content is not None:
        hashed = hashlib.md5(content).digest() if hmac_body == "md5" else content
        content_part = base64.b64encode(hashed).decode("ascii")
    raw_data = f"{app_id}{method}{request_uri}{timestamp}{nonce}{content_part}"
    key = base64.b64decode(secret) if hmac_key_encoding == "base64" else secret.encode("utf-8")
    digest = hashlib.sha256 if hmac_hash == "sha256" else hashlib.sha1
    mac = hmac.new(key, raw_data.encode("utf-8"), digest).digest()
    return base64.b64encode(mac).decode("ascii")


def authorization(
    signature: str,
    *,
    app_id: str = APP_ID,
    nonce: str = NONCE,
    timestamp: str = TIMESTAMP,
    scheme: str = "X-DIY-Signature",
) -> dict[str, str]:
    return {"Authorization": f"{scheme} {app_id}:{signature}:{nonce}:{timestamp}"}


# --------------------------------------------------------------------------- apps


def hmac_channel(**options: Any) -> Channel:
    options = {**REFERENCE, "hmac_uri": "lower-urlencoded", **options}
    options.setdefault("credentials", {APP_ID: SECRET})
    return Channel(provider="diy", auth="hmac", options=options)


def make_app(mount: str = "", way: str = "front door", **options: Any) -> Any:
    """A receiver app with channel ``diy``; mounted at ``mount``; ``way`` "router" adds
    user middleware, so callbacks take the proxy-header middleware instead of the app's
    front door."""
    app: Any = create_app(Config(channels={"diy": hmac_channel(**options)}))
    if way == "router":
        app.add_middleware(_Passthrough)
    if mount:
        app = Starlette(routes=[Mount(mount, app=app)])
    return app


class _Passthrough:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def client_for(app: Any, base_url: str, client: tuple[str, int] = ("testclient", 50000)) -> Any:
    return TestClient(app, base_url=base_url, client=client)


def send(
    client: TestClient,
    method: str,
    target: str,
    signature: str,
    content: bytes | None,
    headers: dict[str, Any] | None = None,
) -> Any:
    all_headers: dict[str, Any] = {**authorization(signature), **(headers or {})}
    if content is not None:
        all_headers.setdefault("Content-Type", "application/json")
    return client.request(method, target, content=content, headers=all_headers)


# --------------------------------------------------------------------------- the issue


def test_hmac_get_without_content_signed_as_reference_is_accepted() -> None:
    """Issue 11: a DIY GET signed as the reference client signs a request without content
    (nothing appended for the body), on a sha256/base64/md5/lower-urlencoded channel."""
    client = client_for(make_app(), "https://hooks.example.com")
    target = f"/diy?{DIY_QUERY}"
    signature = reference_signature(
        method="GET", absolute_uri=f"https://hooks.example.com{target}", content=None
    )
    response = send(client, "GET", target, signature, None)
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- URL vectors


@dataclass(frozen=True)
class Case:
    id: str
    base_url: str  # what TestClient connects to
    target: str  # the request line's path and query, as sent
    signed: str  # the sender's Uri.AbsoluteUri, written out
    headers: tuple[tuple[str, str], ...] = ()
    mount: str = ""


H = "https://hooks.example.com"
CASES = [
    Case("plain", H, f"/diy?{Q}", f"{H}/diy?{Q}"),
    Case("no-query", H, "/diy", f"{H}/diy"),
    Case("diy-form-query", H, f"/diy?{DIY_QUERY}", f"{H}/diy?{DIY_QUERY}"),
    Case("plus", H, f"/diy?{Q}&Ref=a+b", f"{H}/diy?{Q}&Ref=a+b"),
    Case("tilde", H, f"/diy?{Q}&user=~ops", f"{H}/diy?{Q}&user=~ops"),
    Case("bang-star-parens", H, f"/diy?{Q}&x=!*()", f"{H}/diy?{Q}&x=!*()"),
    Case("apostrophe", H, f"/diy?{Q}&name=O'Brien", f"{H}/diy?{Q}&name=O'Brien"),
    Case("all-specials", H, f"/diy?{Q}&s=-_.!*()'~", f"{H}/diy?{Q}&s=-_.!*()'~"),
    Case("space-escaped", H, f"/diy?{Q}&msg=see%20you", f"{H}/diy?{Q}&msg=see%20you"),
    Case("space-as-plus", H, f"/diy?{Q}&msg=see+you", f"{H}/diy?{Q}&msg=see+you"),
    Case("escaped-plus-upper", H, f"/diy?{Q}&n=%2B4477", f"{H}/diy?{Q}&n=%2B4477"),
    Case("escaped-plus-lower", H, f"/diy?{Q}&n=%2b4477", f"{H}/diy?{Q}&n=%2b4477"),
    Case("escaped-tilde-upper", H, f"/diy?{Q}&t=%7E", f"{H}/diy?{Q}&t=%7E"),
    Case("escaped-tilde-lower", H, f"/diy?{Q}&t=%7e", f"{H}/diy?{Q}&t=%7e"),
    Case("upper-case-query", H, f"/diy?{Q}&Campaign=Q4-LAUNCH", f"{H}/diy?{Q}&Campaign=Q4-LAUNCH"),
    Case("utf8-2-bytes", H, f"/diy?{Q}&m=Caf%C3%A9", f"{H}/diy?{Q}&m=Caf%C3%A9"),
    Case("utf8-4-bytes", H, f"/diy?{Q}&m=%F0%9F%91%8D", f"{H}/diy?{Q}&m=%F0%9F%91%8D"),
    Case(
        "escaped-url-in-query",
        H,
        f"/diy?{Q}&cb=https%3A%2F%2Fx.example%2Fa%3Fb%3D1",
        f"{H}/diy?{Q}&cb=https%3A%2F%2Fx.example%2Fa%3Fb%3D1",
    ),
    Case(
        "raw-url-in-query",
        H,
        f"/diy?{Q}&cb=https://x.example/a",
        f"{H}/diy?{Q}&cb=https://x.example/a",
    ),
    Case("sub-delims", H, f"/diy?{Q}&l=a,b;c$d@e:f", f"{H}/diy?{Q}&l=a,b;c$d@e:f"),
    Case("brackets-braces", H, f"/diy?{Q}&a[0]=1&b={{x}}|y", f"{H}/diy?{Q}&a[0]=1&b={{x}}|y"),
    Case("empty-values", H, f"/diy?{Q}&empty=&flag", f"{H}/diy?{Q}&empty=&flag"),
    Case(
        "escaped-hash-percent", H, f"/diy?{Q}&t=%23one&p=100%25", f"{H}/diy?{Q}&t=%23one&p=100%25"
    ),
    Case("http", "http://hooks.example.com", f"/diy?{Q}", f"http://hooks.example.com/diy?{Q}"),
    Case(
        "https-port",
        "https://hooks.example.com:8443",
        f"/diy?{Q}",
        f"https://hooks.example.com:8443/diy?{Q}",
    ),
    Case(
        "http-port",
        "http://hooks.example.com:8080",
        f"/diy?{Q}",
        f"http://hooks.example.com:8080/diy?{Q}",
    ),
    Case(
        "https-default-port-in-host",
        H,
        f"/diy?{Q}",
        f"{H}/diy?{Q}",
        (("Host", "hooks.example.com:443"),),
    ),
    Case(
        "http-default-port-in-host",
        "http://hooks.example.com",
        f"/diy?{Q}",
        f"http://hooks.example.com/diy?{Q}",
        (("Host", "hooks.example.com:80"),),
    ),
    Case(
        "upper-case-host",
        H,
        f"/diy?{Q}",
        f"{H}/diy?{Q}",
        (("Host", "Hooks.EXAMPLE.com"),),
    ),
    Case("ipv4-port", "http://192.0.2.10:8000", f"/diy?{Q}", f"http://192.0.2.10:8000/diy?{Q}"),
    Case(
        "ipv6-port",
        "http://[2001:db8::1]:8000",
        f"/diy?{Q}",
        f"http://[2001:db8::1]:8000/diy?{Q}",
    ),
    Case("mount", H, f"/hooks/v1/diy?{Q}", f"{H}/hooks/v1/diy?{Q}", mount="/hooks/v1"),
    Case(
        "mount-specials",
        H,
        f"/~team/(a)!b*/diy?{Q}&x=~",
        f"{H}/~team/(a)!b*/diy?{Q}&x=~",
        mount="/~team/(a)!b*",
    ),
    Case("mount-no-query", H, "/Hooks/diy", f"{H}/Hooks/diy", mount="/Hooks"),
]
GET_CASES = [case for case in CASES if "?" in case.target]


def _check_case(case: Case, method: str, content: bytes | None) -> None:
    client = client_for(make_app(case.mount), case.base_url)
    signature = reference_signature(method=method, absolute_uri=case.signed, content=content)
    headers = dict(case.headers)
    response = send(client, method, case.target, signature, content, headers)
    assert response.status_code == 200, response.text
    # The check did run: the same request signed over another URL is refused.
    other = reference_signature(method=method, absolute_uri=case.signed + "x", content=content)
    assert send(client, method, case.target, other, content, headers).status_code == 401


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_hmac_reference_post_with_content_accepted(case: Case) -> None:
    _check_case(case, "POST", BODY)


@pytest.mark.parametrize("case", GET_CASES, ids=lambda case: case.id)
def test_hmac_reference_get_without_content_accepted(case: Case) -> None:
    _check_case(case, "GET", None)


def test_hmac_reference_request_targets_reach_the_app_as_written() -> None:
    """The vectors mean what they say only if TestClient sends each target unchanged."""
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        query = scope["query_string"]
        seen.append(scope["raw_path"] + (b"?" + query if query else b""))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    for case in CASES:
        TestClient(app, base_url=case.base_url).get(case.target)
    assert seen == [case.target.encode() for case in CASES]


OPTIONS = [
    pytest.param(hmac_hash, key_encoding, body, id=f"{hmac_hash}-{key_encoding}-{body}")
    for hmac_hash in ("sha1", "sha256")
    for key_encoding in ("base64", "utf8")
    for body in ("md5", "raw")
]
SPECIAL = f"/diy?{Q}&s=-_.!*()'~&m=Caf%C3%A9+%2b"


@pytest.mark.parametrize(("hmac_hash", "key_encoding", "body"), OPTIONS)
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_hmac_reference_every_option_accepted(
    hmac_hash: str, key_encoding: str, body: str, method: str
) -> None:
    secret = SECRET if key_encoding == "base64" else TEXT_SECRET
    options = {"hmac_hash": hmac_hash, "hmac_key_encoding": key_encoding, "hmac_body": body}
    client = client_for(make_app(credentials={APP_ID: secret}, **options), H)
    content = BODY if method == "POST" else None
    signature = reference_signature(
        method=method,
        absolute_uri=H + SPECIAL,
        content=content,
        secret=secret,
        hmac_hash=hmac_hash,
        hmac_key_encoding=key_encoding,
        hmac_body=body,
    )
    assert send(client, method, SPECIAL, signature, content).status_code == 200
    # And the check ran: another option's signature is refused.
    other_hash = "sha1" if hmac_hash == "sha256" else "sha256"
    wrong = reference_signature(
        method=method,
        absolute_uri=H + SPECIAL,
        content=content,
        secret=secret,
        hmac_hash=other_hash,
        hmac_key_encoding=key_encoding,
        hmac_body=body,
    )
    assert send(client, method, SPECIAL, wrong, content).status_code == 401


def test_hmac_reference_empty_content_accepted_both_ways() -> None:
    """A POST with empty content: the reference client hashes the empty content it was
    given (Base64(MD5(""))), its server signs nothing for no bytes; both pass."""
    client = client_for(make_app(), H)
    target = f"/diy?{Q}"
    as_client = reference_signature(method="POST", absolute_uri=H + target, content=b"")
    as_server = reference_signature(method="POST", absolute_uri=H + target, content=None)
    assert as_client != as_server
    assert send(client, "POST", target, as_client, b"").status_code == 200
    assert send(client, "POST", target, as_server, b"").status_code == 200
    # With content, only Base64(MD5(content)) will do.
    no_body_part = reference_signature(method="POST", absolute_uri=H + target, content=None)
    assert send(client, "POST", target, no_body_part, BODY).status_code == 401


# --------------------------------------------------------------------------- tampering

TARGET = f"/diy?{Q}&s=~!*()"
SIGNED = H + TARGET
TAMPERED = {
    "method": {"method": "PUT"},
    "scheme": {"absolute_uri": SIGNED.replace("https:", "http:")},
    "host": {"absolute_uri": SIGNED.replace("hooks.", "hoox.")},
    "port": {"absolute_uri": SIGNED.replace(".com/", ".com:8443/")},
    "path": {"absolute_uri": SIGNED.replace("/diy?", "/diy/?")},
    "query": {"absolute_uri": SIGNED.replace("s=~", "s=-")},
    "query-dropped": {"absolute_uri": f"{H}/diy"},
    "timestamp": {"timestamp": str(int(TIMESTAMP) + 1)},
    "nonce": {"nonce": NONCE[::-1]},
    "content": {"content": BODY.replace(b"Cheers", b"Jeers")},
    "content-omitted": {"content": None},
    "secret": {"secret": OTHER_SECRET},
    "app-id": {"app_id": OTHER_APP_ID},
}


@pytest.mark.parametrize("part", list(TAMPERED))
def test_hmac_reference_tampered_part_rejected(part: str) -> None:
    credentials = {APP_ID: SECRET, OTHER_APP_ID: OTHER_SECRET}
    client = client_for(make_app(credentials=credentials), H)
    signed: dict[str, Any] = {"method": "POST", "absolute_uri": SIGNED, "content": BODY}
    good = reference_signature(**signed)
    assert send(client, "POST", TARGET, good, BODY).status_code == 200
    signed.update(TAMPERED[part])
    bad = reference_signature(**signed)
    assert bad != good
    with capture_logs() as logs:
        response = send(client, "POST", TARGET, bad, BODY)
    assert response.status_code == 401
    for secret in (SECRET, OTHER_SECRET, bad, good):
        assert secret not in response.text
        assert secret not in repr(logs)


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda uri: quote_plus(uri.lower(), safe="").lower(), id="quote_plus"),
        pytest.param(lambda uri: http_utility_url_encode(uri.lower()).upper(), id="upper-hex"),
        pytest.param(lambda uri: http_utility_url_encode(uri), id="not-lowered"),
        pytest.param(lambda uri: uri.lower(), id="not-encoded"),
    ],
)
def test_hmac_reference_other_url_encodings_rejected(encode: Any) -> None:
    """Signed over the URL encoded other than .NET does: refused (no leniency)."""
    client = client_for(make_app(), H)
    target = f"/diy?{Q}&s=~!*()&T=%7E"
    uri = encode(H + target)
    assert uri != http_utility_url_encode((H + target).lower())
    raw_data = f"{APP_ID}POST{uri}{TIMESTAMP}{NONCE}"
    raw_data += base64.b64encode(hashlib.md5(BODY).digest()).decode()
    mac = hmac.new(base64.b64decode(SECRET), raw_data.encode(), hashlib.sha256).digest()
    signature = base64.b64encode(mac).decode()
    assert send(client, "POST", target, signature, BODY).status_code == 401


# --------------------------------------------------------------------------- unit vectors


def test_hmac_url_encoder_matches_http_utility_for_every_ascii_character() -> None:
    for code in range(0x80):
        char = chr(code)
        assert lower_url_encode(char) == http_utility_url_encode(char.lower()), repr(char)


@pytest.mark.parametrize(
    "text",
    ["https://Hooks.Example.com:8443/A B?x=~!*()'&y=%7E", "café ÉTÉ", "ΣΑΣ 👍 日本", "\x00\x7f"],
)
def test_hmac_url_encoder_matches_http_utility(text: str) -> None:
    assert lower_url_encode(text) == http_utility_url_encode(text.lower())


def _request(
    target: bytes, *, method: str = "GET", host: bytes = b"hooks.example.com", body: bytes = b""
) -> CallbackRequest:
    path, _, query = target.partition(b"?")
    scope = {
        "type": "http",
        "method": method,
        "scheme": "https",
        "server": ("10.0.0.5", 8000),
        "path": path.decode("utf-8", "replace"),
        "raw_path": path,
        "query_string": query,
        "headers": [(b"host", host)],
    }
    return CallbackRequest(scope, body)


def _check(**options: Any) -> HmacCheck:
    channel = hmac_channel(**options)
    return HmacCheck(DiyProvider.read_options(channel, "diy"), "diy")


@pytest.mark.parametrize(
    ("target", "signed"),
    [
        pytest.param(f"/diy?{DIY_QUERY}", f"{H}/diy?{DIY_QUERY}", id="diy-query"),
        pytest.param("/diy?a=~!*()'", f"{H}/diy?a=~!*()'", id="specials"),
        pytest.param("/DIY?A=%7E%2b", f"{H}/DIY?A=%7E%2b", id="upper-case"),
        # Not what a .NET sender sends (it escapes them), but another sender may: bytes
        # beyond ASCII are the UTF-8 of the text it signed.
        pytest.param("/diy?m=CAFÉ ÉTÉ", f"{H}/diy?m=CAFÉ ÉTÉ", id="raw-utf8"),
        pytest.param("/diy/Ω?m=👍", f"{H}/diy/Ω?m=👍", id="raw-utf8-path"),
    ],
)
@pytest.mark.parametrize("body", [b"", BODY], ids=["no-content", "content"])
def test_hmac_signature_vectors(target: str, signed: str, body: bytes) -> None:
    request = _request(target.encode(), body=body)
    expected = reference_signature(
        method="GET", absolute_uri=signed, content=body if body else None
    )
    assert _check().signature(request, APP_ID, NONCE, TIMESTAMP) == expected.encode()


def test_hmac_signature_vector_with_public_url() -> None:
    # The URL the provider calls, as written (its trailing "/" kept, as the sender's
    # Uri keeps it); the same URL without the "/" passes the check too (see below).
    check = _check(public_url="https://Bücher.example/Hooks/diy/")
    request = _request(b"/diy?m=%C3%A9~", host=b"internal:8000", body=BODY)
    expected = reference_signature(
        method="GET", absolute_uri="https://Bücher.example/Hooks/diy/?m=%C3%A9~", content=BODY
    )
    assert check.signature(request, APP_ID, NONCE, TIMESTAMP) == expected.encode()


@pytest.mark.parametrize(
    ("public_url", "signed"),
    [
        ("https://example.com/hooks/diy/", "https://example.com/hooks/diy"),
        ("https://example.com/hooks/diy/", "https://example.com/hooks/diy/"),
        ("https://example.com/hooks/diy", "https://example.com/hooks/diy"),
        ("https://EXAMPLE.com:443/hooks/diy", "https://example.com/hooks/diy"),
    ],
)
def test_hmac_public_url_with_or_without_its_trailing_slash_passes(
    public_url: str, signed: str
) -> None:
    check = _check(public_url=public_url)
    request = _request(b"/diy?m=1", host=b"internal:8000", body=BODY)
    good = reference_signature(method="GET", absolute_uri=f"{signed}?m=1", content=BODY)
    header = authorization(good)["Authorization"].encode()
    check.check(CallbackRequest(request.scope, request.body, {b"authorization": header}))


def test_hmac_signature_vector_issue_example() -> None:
    """The issue's GET: before the fix receiver appended Base64(MD5("")) for no content."""
    request = _request(f"/diy?{DIY_QUERY}".encode())
    signed = f"{H}/diy?{DIY_QUERY}"
    expected = reference_signature(method="GET", absolute_uri=signed, content=None)
    with_md5_of_nothing = reference_signature(method="GET", absolute_uri=signed, content=b"")
    got = _check().signature(request, APP_ID, NONCE, TIMESTAMP)
    assert got == expected.encode()
    assert got != with_md5_of_nothing.encode()


# --------------------------------------------------------------------------- forwarded ports

INTERNAL = "http://127.0.0.1:8000"
PROXY = ("127.0.0.1", 40000)  # a trusted proxy (the default trusted_proxies)
WAYS = ["front door", "router"]
PORT_TARGET = f"/diy?{Q}&s=~"


def _through_proxy(way: str, headers: dict[str, Any], signed: str, peer: Any = PROXY) -> int:
    """Status of a GET signed over ``signed``, sent by ``peer`` with proxy ``headers``."""
    client = client_for(make_app(way=way), INTERNAL, client=peer)
    signature = reference_signature(method="GET", absolute_uri=signed, content=None)
    response = send(client, "GET", PORT_TARGET, signature, None, headers)
    assert response.status_code in (200, 401), response.text
    return int(response.status_code)


@pytest.mark.parametrize("way", WAYS)
def test_hmac_forwarded_port_is_in_the_signed_url(way: str) -> None:
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "hooks.example.com",
        "X-Forwarded-Port": "8443",
    }
    assert _through_proxy(way, headers, f"https://hooks.example.com:8443{PORT_TARGET}") == 200
    assert _through_proxy(way, headers, f"https://hooks.example.com{PORT_TARGET}") == 401


@pytest.mark.parametrize("way", WAYS)
def test_hmac_forwarded_port_added_to_the_host_header(way: str) -> None:
    """No forwarded host (the proxy sets Host itself, without a port): the port is added."""
    headers = {"Host": "hooks.example.com", "X-Forwarded-Proto": "https"}
    headers["X-Forwarded-Port"] = "8443"
    assert _through_proxy(way, headers, f"https://hooks.example.com:8443{PORT_TARGET}") == 200
    assert _through_proxy(way, headers, f"https://hooks.example.com{PORT_TARGET}") == 401


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(("scheme", "port"), [("https", "443"), ("http", "80")])
def test_hmac_forwarded_default_port_is_dropped(way: str, scheme: str, port: str) -> None:
    """As Uri.AbsoluteUri does: the sender signed the URL without its default port."""
    headers = {
        "X-Forwarded-Proto": scheme,
        "X-Forwarded-Host": "hooks.example.com",
        "X-Forwarded-Port": port,
    }
    assert _through_proxy(way, headers, f"{scheme}://hooks.example.com{PORT_TARGET}") == 200
    signed_with_port = f"{scheme}://hooks.example.com:{port}{PORT_TARGET}"
    assert _through_proxy(way, headers, signed_with_port) == 401


@pytest.mark.parametrize("way", WAYS)
def test_hmac_x_forwarded_host_with_port(way: str) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com:8443"}
    assert _through_proxy(way, headers, f"https://hooks.example.com:8443{PORT_TARGET}") == 200
    assert _through_proxy(way, headers, f"https://hooks.example.com{PORT_TARGET}") == 401


@pytest.mark.parametrize("way", WAYS)
def test_hmac_forwarded_header_host_with_port(way: str) -> None:
    headers = {"Forwarded": 'for=203.0.113.7;proto=https;host="hooks.example.com:8443"'}
    assert _through_proxy(way, headers, f"https://hooks.example.com:8443{PORT_TARGET}") == 200
    assert _through_proxy(way, headers, f"https://hooks.example.com{PORT_TARGET}") == 401
    with_default = {"Forwarded": 'proto=https;host="hooks.example.com:443"'}
    assert _through_proxy(way, with_default, f"https://hooks.example.com{PORT_TARGET}") == 200


@pytest.mark.parametrize("way", WAYS)
def test_hmac_port_in_forwarded_host_wins_over_forwarded_port(way: str) -> None:
    """The host's port is the one the caller put in its URL (the port header is where
    the proxy listened; behind a port mapping they differ)."""
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "hooks.example.com:9443",
        "X-Forwarded-Port": "443",
    }
    assert _through_proxy(way, headers, f"https://hooks.example.com:9443{PORT_TARGET}") == 200
    assert _through_proxy(way, headers, f"https://hooks.example.com{PORT_TARGET}") == 401
    forwarded = {
        "Forwarded": 'proto=https;host="hooks.example.com:9443"',
        "X-Forwarded-Port": "8443",
    }
    assert _through_proxy(way, forwarded, f"https://hooks.example.com:9443{PORT_TARGET}") == 200


@pytest.mark.parametrize("way", WAYS)
def test_hmac_forwarded_port_of_the_nearest_proxy_is_used(way: str) -> None:
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "hooks.example.com",
        "X-Forwarded-Port": "9000, 8443",
    }
    assert _through_proxy(way, headers, f"https://hooks.example.com:8443{PORT_TARGET}") == 200


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(
    "port",
    [
        *(pytest.param(p, id=p) for p in ("https", "0", "65536", "-8443", "+8443", "84_43")),
        *(pytest.param(p, id=p) for p in ("8443x", "8443 8444", "", " ", "0x1F")),
        pytest.param("9" * 5000, id="5000-digits"),
        pytest.param("8²".encode("latin-1"), id="superscript-digit"),
    ],
)
def test_hmac_forwarded_port_not_a_port_is_ignored(way: str, port: str | bytes) -> None:
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "hooks.example.com",
        "X-Forwarded-Port": port,
    }
    assert _through_proxy(way, headers, f"https://hooks.example.com{PORT_TARGET}") == 200


@pytest.mark.parametrize("way", WAYS)
def test_hmac_forwarded_port_from_an_untrusted_peer_changes_nothing(way: str) -> None:
    peer = ("203.0.113.50", 40000)
    headers = {"X-Forwarded-Port": "8443"}
    assert _through_proxy(way, headers, f"{INTERNAL}{PORT_TARGET}", peer) == 200
    assert _through_proxy(way, headers, f"http://127.0.0.1:8443{PORT_TARGET}", peer) == 401
    # The same header from the trusted proxy does count.
    assert _through_proxy(way, headers, f"http://127.0.0.1:8000{PORT_TARGET}") == 200


# --------------------------------------------------------------------------- receiver.testing


@pytest.mark.parametrize(("hmac_hash", "key_encoding", "body"), OPTIONS)
@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_hmac_reference_sign_onepoint_agrees(
    case: Case, method: str, hmac_hash: str, key_encoding: str, body: str
) -> None:
    # receiver.testing.sign_onepoint (what tests and `receiver send` sign with) computes
    # the reference client's value for every URL case and option above.
    from receiver.providers.onepoint_signature import OnePointOptions
    from receiver.testing import sign_onepoint

    secret = SECRET if key_encoding == "base64" else TEXT_SECRET
    content = BODY if method == "POST" else None
    expected = reference_signature(
        method=method,
        absolute_uri=case.signed,
        content=content,
        secret=secret,
        hmac_hash=hmac_hash,
        hmac_key_encoding=key_encoding,
        hmac_body=body,
    )
    options = OnePointOptions(
        hmac_hash=hmac_hash,  # type: ignore[arg-type]
        hmac_key_encoding=key_encoding,  # type: ignore[arg-type]
        hmac_body=body,  # type: ignore[arg-type]
        hmac_uri="lower-urlencoded",
    )
    value = sign_onepoint(
        method,
        case.signed,
        content or b"",
        app_id=APP_ID,
        secret=secret,
        options=options,
        nonce=NONCE,
        timestamp=TIMESTAMP,
        scheme="X-DIY-Signature",
    )
    assert {"Authorization": value} == authorization(expected)
