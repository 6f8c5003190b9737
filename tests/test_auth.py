"""Callback authentication: one contract for every auth mode, then HMAC in detail.

Every signature here is computed in the test by :func:`sign` below, with
:func:`receiver.testing.sign_onepoint` (never a pasted value); that signer is checked
against an independent implementation of OnePoint's reference client in
test_hmac_reference.py. The app is driven through Starlette's TestClient.
"""

from __future__ import annotations

import base64
import hmac
import itertools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import msgspec
import pytest
from samples import payload
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import Channel, Config, create_app
from receiver.providers.onepoint_signature import OnePointOptions
from receiver.testing import sign_onepoint

BASE_URL = "https://hooks.example.com"
WHISPIR_BODY = payload("whispir", "reply_sms.json")
ONEPOINT_BODY = payload("onepoint", "message_inbound.json")
DIY_QUERY = payload("diy", "message_inbound.query").decode().strip()
JSON_TYPE = "application/json"

# Two keys per mode: the first is "the" key, the second the rotated-in one.
PLAIN_KEYS = ("wk-0ld-7c41e9a2d5f08b", "wk-n3w-b86f03d1c4e97a")
USERPASS_KEYS = ("hooks:0ld-p4ss-7c41e9a2", "hooks:n3w-p4ss-b86f03d1")
APP_IDS = ("APP-OLD-1010", "APP-NEW-2020")
SECRETS = ("s3cr3t-0ld-é-9f2d41c7", "s3cr3t-n3w-ü-0c7e55ab")
WRONG_KEY = "wk-wrong-0000000000000"
WRONG_SECRET = "s3cr3t-wrong-00000000"
NONCE = "f1e2d3c4b5a6478c9d0e1f2a3b4c5d6e"  # a GUID, as the reference client makes it
TIMESTAMP = str(int(time.time()))  # now: the check refuses a Timestamp out of its window


@pytest.fixture(autouse=True)
def _verified_at_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier's clock at :data:`TIMESTAMP` (the signatures' defaults were made with
    it at import): the suite may reach these tests more than the check's window after."""
    from receiver.providers import onepoint_signature

    monkeypatch.setattr(onepoint_signature, "now", lambda: float(TIMESTAMP))


# --------------------------------------------------------------------------- signer


def sign(
    *,
    app_id: str,
    secret: str,
    method: str,
    uri: str,
    body: bytes,
    nonce: str = NONCE,
    timestamp: str = TIMESTAMP,
    hmac_hash: str = "sha1",
    hmac_key_encoding: str = "utf8",
    hmac_body: str = "raw",
    hmac_uri: str = "as-sent",
) -> str:
    """The Signature part of OnePoint's X-OPG-Signature (receiver.testing.sign_onepoint),
    for tests that present it in altered headers.

    Base64(HMAC-<hash>(Secret, AppId + METHOD + URI + Timestamp + Nonce + Base64(body))).
    """
    options = msgspec.convert(
        {
            "hmac_hash": hmac_hash,
            "hmac_key_encoding": hmac_key_encoding,
            "hmac_body": hmac_body,
            "hmac_uri": hmac_uri,
        },
        OnePointOptions,
    )
    value = sign_onepoint(
        method,
        uri,
        body,
        app_id=app_id,
        secret=secret,
        options=options,
        nonce=nonce,
        timestamp=timestamp,
    )
    return value.split(":")[1]


def signature_header(
    app_id: str,
    signature: str,
    *,
    scheme: str = "X-OPG-Signature",
    nonce: str = NONCE,
    timestamp: str = TIMESTAMP,
) -> dict[str, str]:
    return {"Authorization": f"{scheme} {app_id}:{signature}:{nonce}:{timestamp}"}


# --------------------------------------------------------------------------- helpers


def client_for(channels: dict[str, Channel], base_url: str = BASE_URL) -> TestClient:
    app = create_app(Config(channels=channels))
    return TestClient(app, base_url=base_url, raise_server_exceptions=True)


def assert_401(response: Any, never: Iterable[str]) -> None:
    """401 with a JSON {"error": "..."} body that leaks none of ``never``."""
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith(JSON_TYPE)
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"]
    for secret in never:
        assert secret not in response.text
        # Not even percent- or JSON-escaped.
        assert quote_plus(secret) not in response.text
        assert json.dumps(secret)[1:-1] not in response.text


def basic_token(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


# --------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class Mode:
    """One auth mode: how its channel is configured and how a caller presents a key."""

    id: str
    keys: tuple[str, str]
    make_channel: Callable[[list[str]], Channel]
    # (presented key or None for "no credentials") -> (path, headers, body)
    present: Callable[[str | None], tuple[str, dict[str, str], bytes]]

    def channel(self, keys: Iterable[str]) -> Channel:
        return self.make_channel(list(keys))

    def client(self, keys: Iterable[str]) -> TestClient:
        return client_for({"hook": self.channel(keys)})

    def post(self, client: TestClient, key: str | None) -> Any:
        path, headers, body = self.present(key)
        return client.post(path, content=body, headers={"Content-Type": JSON_TYPE, **headers})


def _whispir(key: str | None, headers: dict[str, str] | None = None, path: str = "/hook"):
    return path, (headers if key is not None and headers else {}), WHISPIR_BODY


def _present_header(name: str) -> Callable[[str | None], tuple[str, dict[str, str], bytes]]:
    return lambda key: _whispir(key, {name: key} if key is not None else None)


def _present_query(param: str) -> Callable[[str | None], tuple[str, dict[str, str], bytes]]:
    def present(key: str | None) -> tuple[str, dict[str, str], bytes]:
        path = "/hook" if key is None else f"/hook?{param}={quote_plus(key)}"
        return path, {}, WHISPIR_BODY

    return present


def _present_authorization(
    scheme: str, encode: Callable[[str], str] = lambda key: key
) -> Callable[[str | None], tuple[str, dict[str, str], bytes]]:
    def present(key: str | None) -> tuple[str, dict[str, str], bytes]:
        headers = {} if key is None else {"Authorization": f"{scheme} {encode(key)}"}
        return "/hook", headers, WHISPIR_BODY

    return present


def _hmac_channel(secrets: list[str]) -> Channel:
    return Channel(
        provider="onepoint",
        auth="hmac",
        options={"credentials": dict(zip(APP_IDS, secrets, strict=False))},
    )


def _present_hmac(key: str | None) -> tuple[str, dict[str, str], bytes]:
    if key is None:
        return "/hook", {}, ONEPOINT_BODY
    app_id = APP_IDS[SECRETS.index(key)] if key in SECRETS else APP_IDS[0]
    signature = sign(
        app_id=app_id, secret=key, method="POST", uri=f"{BASE_URL}/hook", body=ONEPOINT_BODY
    )
    return "/hook", signature_header(app_id, signature), ONEPOINT_BODY


MODES = [
    Mode(
        "header",
        PLAIN_KEYS,
        lambda keys: Channel(provider="whispir", auth="header", keys=keys),
        _present_header("X-Whispir-Callback-Key"),
    ),
    Mode(
        "custom-header",
        PLAIN_KEYS,
        lambda keys: Channel(provider="whispir", auth="header", keys=keys, header="X-Hook-Token"),
        _present_header("X-Hook-Token"),
    ),
    Mode(
        "query",
        PLAIN_KEYS,
        lambda keys: Channel(provider="whispir", auth="query", keys=keys),
        _present_query("auth"),
    ),
    Mode(
        "query-Auth",
        PLAIN_KEYS,
        lambda keys: Channel(provider="whispir", auth="query", keys=keys, param="auth"),
        _present_query("Auth"),
    ),
    Mode(
        "basic-as-sent",
        PLAIN_KEYS,
        lambda keys: Channel(provider="whispir", auth="basic", keys=keys),
        _present_authorization("Basic"),
    ),
    Mode(
        "basic-user-pass",
        USERPASS_KEYS,
        lambda keys: Channel(provider="whispir", auth="basic", keys=keys),
        _present_authorization("Basic", basic_token),
    ),
    Mode(
        "bearer",
        PLAIN_KEYS,
        lambda keys: Channel(provider="whispir", auth="bearer", keys=keys),
        _present_authorization("Bearer"),
    ),
    Mode("hmac", SECRETS, _hmac_channel, _present_hmac),
]
KEY_MODES = [mode for mode in MODES if mode.id != "hmac"]


def _configured(mode: Mode) -> list[str]:
    return [*mode.keys, *(APP_IDS if mode.id == "hmac" else ())]


def _secrets_only(mode: Mode) -> list[str]:
    return list(mode.keys)


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.id)
def test_auth_right_key_accepted(mode: Mode) -> None:
    client = mode.client(mode.keys[:1])
    response = mode.post(client, mode.keys[0])
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.id)
def test_auth_wrong_key_rejected(mode: Mode) -> None:
    client = mode.client(mode.keys[:1])
    wrong = WRONG_SECRET if mode.id == "hmac" else WRONG_KEY
    if mode.id == "basic-user-pass":
        wrong = "hooks:wrong-p4ss-00000000"
    response = mode.post(client, wrong)
    assert_401(response, [*_secrets_only(mode), wrong])


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.id)
def test_auth_rotated_key_accepted(mode: Mode) -> None:
    client = mode.client(mode.keys)
    assert mode.post(client, mode.keys[1]).status_code == 200
    assert mode.post(client, mode.keys[0]).status_code == 200


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.id)
def test_auth_missing_credentials_rejected(mode: Mode) -> None:
    client = mode.client(mode.keys)
    response = mode.post(client, None)
    assert_401(response, _secrets_only(mode))


@pytest.mark.parametrize("mode", KEY_MODES, ids=lambda mode: mode.id)
def test_auth_empty_key_rejected(mode: Mode) -> None:
    client = mode.client(mode.keys)
    path, headers, body = mode.present(mode.keys[0])
    # The same request shape, with an empty value where the key goes.
    path = path.split("?")[0] + ("?auth=" if "?" in path else "")
    headers = {
        name: value.split(" ")[0] + " " if " " in value else "" for name, value in headers.items()
    }
    response = client.post(path, content=body, headers={"Content-Type": JSON_TYPE, **headers})
    assert_401(response, _secrets_only(mode))


@pytest.mark.parametrize("mode", KEY_MODES, ids=lambda mode: mode.id)
def test_auth_key_prefix_rejected(mode: Mode) -> None:
    """A key that is a prefix of the real key (or the key plus more) is not the key."""
    client = mode.client(mode.keys[:1])
    real = mode.keys[0]
    for presented in (real[:-1], real[: len(real) // 2], real[:1], real + "x"):
        assert_401(mode.post(client, presented), _secrets_only(mode))


def _spy_compare_digest(monkeypatch: pytest.MonkeyPatch) -> list[set[bytes]]:
    """Record the operands of every ``hmac.compare_digest`` call from now on."""
    calls: list[set[bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append({x.encode() if isinstance(x, str) else bytes(x) for x in (a, b)})
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


@pytest.mark.parametrize("mode", KEY_MODES, ids=lambda mode: mode.id)
def test_auth_keys_compared_in_constant_time(mode: Mode, monkeypatch: pytest.MonkeyPatch) -> None:
    """A presented key goes through hmac.compare_digest against every key, with no early
    exit: a match on the first key still compares the second, a miss compares both.
    (A plain ``==`` would leave the keys out of the recorded comparisons.)"""
    client = mode.client(mode.keys)
    compared = _spy_compare_digest(monkeypatch)
    every_key = {key.encode() for key in mode.keys}
    for presented, status in ((mode.keys[0], 200), (mode.keys[1], 200), (WRONG_KEY, 401)):
        compared.clear()
        assert mode.post(client, presented).status_code == status
        assert every_key <= set().union(*compared), presented


def test_auth_signature_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A presented signature, right or wrong, goes through hmac.compare_digest."""
    client = client_for({"hook": _hmac_channel([SECRETS[0]])})
    compared = _spy_compare_digest(monkeypatch)
    for secret, status in ((SECRETS[0], 200), (WRONG_SECRET, 401)):
        presented = sign(
            app_id=APP_IDS[0],
            secret=secret,
            method="POST",
            uri=f"{BASE_URL}/hook",
            body=ONEPOINT_BODY,
        )
        compared.clear()
        response = client.post(
            "/hook",
            content=ONEPOINT_BODY,
            headers={"Content-Type": JSON_TYPE, **signature_header(APP_IDS[0], presented)},
        )
        assert response.status_code == status
        assert any(presented.encode() in operands for operands in compared)


def test_auth_signature_prefix_rejected() -> None:
    client = client_for({"hook": _hmac_channel([SECRETS[0]])})
    signature = sign(
        app_id=APP_IDS[0],
        secret=SECRETS[0],
        method="POST",
        uri=f"{BASE_URL}/hook",
        body=ONEPOINT_BODY,
    )
    for presented in (signature[:-1], signature[:10], signature.rstrip("=")):
        if presented == signature:
            continue
        response = client.post(
            "/hook",
            content=ONEPOINT_BODY,
            headers={"Content-Type": JSON_TYPE, **signature_header(APP_IDS[0], presented)},
        )
        assert_401(response, [SECRETS[0]])


@pytest.mark.parametrize("mode", KEY_MODES, ids=lambda mode: mode.id)
def test_auth_key_in_wrong_place_rejected(mode: Mode) -> None:
    """The right key, but not where this mode reads it (body, another header)."""
    client = mode.client(mode.keys[:1])
    key = mode.keys[0]
    elsewhere = (
        {"X-Other-Key": key}
        if mode.id.startswith("query")
        else {"Authorization": f"Token {key}"}
        if "header" in mode.id
        else {"X-Whispir-Callback-Key": key}
    )
    response = client.post(
        "/hook?other=" + quote_plus(key) if not mode.id.startswith("query") else "/hook",
        content=WHISPIR_BODY,
        headers={"Content-Type": JSON_TYPE, **elsewhere},
    )
    assert_401(response, [])


def test_auth_none_accepts_without_credentials() -> None:
    client = client_for({"open": Channel(provider="whispir", auth="none")})
    response = client.post("/open", content=WHISPIR_BODY, headers={"Content-Type": JSON_TYPE})
    assert response.status_code == 200, response.text


def test_auth_channels_are_independent() -> None:
    """One channel's key does not open another channel."""
    client = client_for(
        {
            "a": Channel(provider="whispir", auth="header", keys=[PLAIN_KEYS[0]]),
            "b": Channel(provider="whispir", auth="header", keys=[PLAIN_KEYS[1]]),
        }
    )
    headers = {"Content-Type": JSON_TYPE, "X-Whispir-Callback-Key": PLAIN_KEYS[0]}
    assert client.post("/a", content=WHISPIR_BODY, headers=headers).status_code == 200
    assert_401(client.post("/b", content=WHISPIR_BODY, headers=headers), PLAIN_KEYS)


# --------------------------------------------------------------------------- HMAC

B64_SECRET = base64.b64encode(bytes(range(7, 39)) + "é".encode()).decode()  # 34 raw bytes
HMAC_OPTIONS = list(
    itertools.product(
        ("sha1", "sha256"), ("utf8", "base64"), ("raw", "md5"), ("as-sent", "lower-urlencoded")
    )
)
# A query with upper case and escapes, so that lowercasing and re-encoding matter.
HMAC_PATH = "/Sms?Campaign=Q4-Launch&Ref=AbC%2F1"


def _hmac_combo_client(options: tuple[str, str, str, str]) -> tuple[TestClient, str]:
    hmac_hash, key_encoding, hmac_body, hmac_uri = options
    secret = B64_SECRET if key_encoding == "base64" else SECRETS[0]
    channel = Channel(
        provider="onepoint",
        auth="hmac",
        options={
            "credentials": {APP_IDS[0]: secret},
            "hmac_hash": hmac_hash,
            "hmac_key_encoding": key_encoding,
            "hmac_body": hmac_body,
            "hmac_uri": hmac_uri,
        },
    )
    return client_for({"Sms": channel}), secret


def _combo_sign(options: tuple[str, str, str, str], secret: str, body: bytes) -> str:
    hmac_hash, key_encoding, hmac_body, hmac_uri = options
    return sign(
        app_id=APP_IDS[0],
        secret=secret,
        method="POST",
        uri=BASE_URL + HMAC_PATH,
        body=body,
        hmac_hash=hmac_hash,
        hmac_key_encoding=key_encoding,
        hmac_body=hmac_body,
        hmac_uri=hmac_uri,
    )


@pytest.mark.parametrize("options", HMAC_OPTIONS, ids="-".join)
def test_auth_hmac_every_option_combination_accepts_correct_signature(
    options: tuple[str, str, str, str],
) -> None:
    client, secret = _hmac_combo_client(options)
    signature = _combo_sign(options, secret, ONEPOINT_BODY)
    response = client.post(
        HMAC_PATH,
        content=ONEPOINT_BODY,
        headers={"Content-Type": JSON_TYPE, **signature_header(APP_IDS[0], signature)},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("options", HMAC_OPTIONS, ids="-".join)
def test_auth_hmac_every_option_combination_rejects_tampered_body(
    options: tuple[str, str, str, str],
) -> None:
    client, secret = _hmac_combo_client(options)
    signed_body = ONEPOINT_BODY.replace(b"Cheers, Priya", b"Cheers, Mallory")
    assert signed_body != ONEPOINT_BODY
    signature = _combo_sign(options, secret, signed_body)
    response = client.post(
        HMAC_PATH,
        content=ONEPOINT_BODY,
        headers={"Content-Type": JSON_TYPE, **signature_header(APP_IDS[0], signature)},
    )
    assert_401(response, [secret, signature])


@pytest.mark.parametrize("options", HMAC_OPTIONS, ids="-".join)
def test_auth_hmac_every_option_combination_rejects_other_options(
    options: tuple[str, str, str, str],
) -> None:
    """A signature made under different options (here: the other hash) does not pass."""
    client, secret = _hmac_combo_client(options)
    other = ("sha256" if options[0] == "sha1" else "sha1", *options[1:])
    signature = _combo_sign(other, secret, ONEPOINT_BODY)
    response = client.post(
        HMAC_PATH,
        content=ONEPOINT_BODY,
        headers={"Content-Type": JSON_TYPE, **signature_header(APP_IDS[0], signature)},
    )
    assert_401(response, [secret])


def _hmac_client(**options: Any) -> TestClient:
    return client_for(
        {
            "sms": Channel(
                provider="onepoint",
                auth="hmac",
                options={"credentials": {APP_IDS[0]: SECRETS[0]}, **options},
            )
        }
    )


def _post_signed(client: TestClient, headers: dict[str, str], path: str = "/sms") -> Any:
    return client.post(path, content=ONEPOINT_BODY, headers={"Content-Type": JSON_TYPE, **headers})


def _default_signature(uri: str = f"{BASE_URL}/sms", **kwargs: Any) -> str:
    return sign(
        app_id=kwargs.pop("app_id", APP_IDS[0]),
        secret=kwargs.pop("secret", SECRETS[0]),
        method=kwargs.pop("method", "POST"),
        uri=uri,
        body=kwargs.pop("body", ONEPOINT_BODY),
        **kwargs,
    )


def test_auth_hmac_diy_scheme_accepted() -> None:
    client = _hmac_client()
    headers = signature_header(APP_IDS[0], _default_signature(), scheme="X-DIY-Signature")
    assert _post_signed(client, headers).status_code == 200


def test_auth_hmac_scheme_name_ignores_case() -> None:
    client = _hmac_client()
    headers = signature_header(APP_IDS[0], _default_signature(), scheme="x-opg-signature")
    assert _post_signed(client, headers).status_code == 200


def test_auth_hmac_unknown_scheme_rejected() -> None:
    client = _hmac_client()
    headers = signature_header(APP_IDS[0], _default_signature(), scheme="X-ABC-Signature")
    assert_401(_post_signed(client, headers), [SECRETS[0]])


def test_auth_hmac_unknown_app_id_rejected() -> None:
    client = _hmac_client()
    signature = _default_signature(app_id="APP-UNKNOWN-9999")
    assert_401(_post_signed(client, signature_header("APP-UNKNOWN-9999", signature)), [SECRETS[0]])


def test_auth_hmac_app_id_of_other_secret_rejected() -> None:
    """Signed with one AppId's secret but presented under another AppId."""
    client = client_for(
        {
            "sms": Channel(
                provider="onepoint",
                auth="hmac",
                options={"credentials": dict(zip(APP_IDS, SECRETS, strict=True))},
            )
        }
    )
    signature = _default_signature(app_id=APP_IDS[1], secret=SECRETS[0])
    assert_401(_post_signed(client, signature_header(APP_IDS[1], signature)), SECRETS)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("{app}:{sig}:{nonce}", id="three-parts"),
        pytest.param("{app}:{sig}", id="two-parts"),
        pytest.param("", id="empty"),
        pytest.param("{app}{sig}{nonce}{ts}", id="no-separators"),
    ],
)
def test_auth_hmac_malformed_header_rejected(value: str) -> None:
    client = _hmac_client()
    signature = _default_signature()
    header = "X-OPG-Signature " + value.format(
        app=APP_IDS[0], sig=signature, nonce=NONCE, ts=TIMESTAMP
    )
    response = _post_signed(client, {"Authorization": header})
    assert_401(response, [SECRETS[0]])


def test_auth_hmac_missing_header_rejected() -> None:
    assert_401(_post_signed(_hmac_client(), {}), [SECRETS[0]])


def test_auth_hmac_nonce_and_timestamp_are_signed() -> None:
    client = _hmac_client()
    signature = _default_signature()
    assert _post_signed(client, signature_header(APP_IDS[0], signature)).status_code == 200
    changed_nonce = signature_header(
        APP_IDS[0], signature, nonce="00000000000000000000000000000000"
    )
    assert_401(_post_signed(client, changed_nonce), [SECRETS[0]])
    changed_time = signature_header(APP_IDS[0], signature, timestamp=str(int(TIMESTAMP) + 1))
    assert_401(_post_signed(client, changed_time), [SECRETS[0]])


def test_auth_hmac_method_is_signed() -> None:
    client = _hmac_client()
    signature = _default_signature(method="GET")
    assert_401(_post_signed(client, signature_header(APP_IDS[0], signature)), [SECRETS[0]])


def test_auth_hmac_query_string_is_signed() -> None:
    client = _hmac_client()
    path = "/sms?Ref=AbC%2F1"
    signed = _default_signature(uri=f"{BASE_URL}{path}")
    assert _post_signed(client, signature_header(APP_IDS[0], signed), path).status_code == 200
    without_query = _default_signature(uri=f"{BASE_URL}/sms")
    assert_401(
        _post_signed(client, signature_header(APP_IDS[0], without_query), path), [SECRETS[0]]
    )


def test_auth_hmac_get_callback_signed_with_empty_body() -> None:
    client = client_for(
        {
            "diy": Channel(
                provider="diy", auth="hmac", options={"credentials": {APP_IDS[0]: SECRETS[0]}}
            )
        }
    )
    path = f"/diy?{DIY_QUERY}"
    signature = _default_signature(uri=f"{BASE_URL}{path}", method="GET", body=b"")
    response = client.get(
        path, headers=signature_header(APP_IDS[0], signature, scheme="X-DIY-Signature")
    )
    assert response.status_code == 200, response.text
    # The same GET signed as if it had a body, or without its query, is refused.
    with_body = _default_signature(uri=f"{BASE_URL}{path}", method="GET", body=b"{}")
    assert_401(client.get(path, headers=signature_header(APP_IDS[0], with_body)), [SECRETS[0]])
    no_query = _default_signature(uri=f"{BASE_URL}/diy", method="GET", body=b"")
    assert_401(client.get(path, headers=signature_header(APP_IDS[0], no_query)), [SECRETS[0]])


PUBLIC_URL = "https://public.example.com/hooks/sms"
INTERNAL_BASE = "http://internal:8000"


def test_auth_hmac_public_url_used_behind_proxy() -> None:
    client = client_for(
        {
            "sms": Channel(
                provider="onepoint",
                auth="hmac",
                options={"credentials": {APP_IDS[0]: SECRETS[0]}, "public_url": PUBLIC_URL},
            )
        },
        base_url=INTERNAL_BASE,
    )
    signature = _default_signature(uri=PUBLIC_URL)
    assert _post_signed(client, signature_header(APP_IDS[0], signature)).status_code == 200
    # With a query, the query is appended to public_url.
    path = "/sms?Ref=AbC"
    with_query = _default_signature(uri=f"{PUBLIC_URL}?Ref=AbC")
    assert _post_signed(client, signature_header(APP_IDS[0], with_query), path).status_code == 200


def test_auth_hmac_without_public_url_rejects_and_logs_url_used() -> None:
    client = client_for(
        {
            "sms": Channel(
                provider="onepoint", auth="hmac", options={"credentials": {APP_IDS[0]: SECRETS[0]}}
            )
        },
        base_url=INTERNAL_BASE,
    )
    signature = _default_signature(uri=PUBLIC_URL)
    with capture_logs() as logs:
        response = _post_signed(client, signature_header(APP_IDS[0], signature))
    assert_401(response, [SECRETS[0], signature])

    warnings = [entry for entry in logs if entry.get("log_level") == "warning"]
    text = [repr(entry) for entry in warnings]
    hints = [t for t in text if "http://internal:8000/sms" in t and "public_url" in t]
    assert hints, f"no warning names the URL checked and public_url: {logs!r}"
    everything = repr(logs)
    assert SECRETS[0] not in everything
    assert signature not in everything
    assert signature.rstrip("=") not in everything
    # The signature the app expected is not logged either (it would be an oracle).
    expected = _default_signature(uri=f"{INTERNAL_BASE}/sms")
    assert expected not in everything


def test_auth_failures_never_log_keys() -> None:
    client = client_for({"hook": Channel(provider="whispir", auth="query", keys=[PLAIN_KEYS[0]])})
    with capture_logs() as logs:
        response = client.post(
            f"/hook?auth={WRONG_KEY}", content=WHISPIR_BODY, headers={"Content-Type": JSON_TYPE}
        )
    assert_401(response, [PLAIN_KEYS[0], WRONG_KEY])
    assert logs
    assert PLAIN_KEYS[0] not in repr(logs)
    assert WRONG_KEY not in repr(logs)


def test_auth_signature_mismatch_log_line_holds_no_query() -> None:
    """The mismatch line names the URL signed, for a proxy set-up, but not its query: a GET
    callback's query holds phone numbers and message text."""
    client = client_for({"hook": _hmac_channel([SECRETS[0]])})
    query = "Type=Message&Source=447700900123&Message=private+words"
    presented = sign(
        app_id=APP_IDS[0],
        secret=WRONG_SECRET,
        method="GET",
        uri=f"{BASE_URL}/hook?{query}",
        body=b"",
    )
    with capture_logs() as logs:
        response = client.get(f"/hook?{query}", headers=signature_header(APP_IDS[0], presented))
    assert response.status_code == 401
    (line,) = [entry for entry in logs if entry["event"] == "hmac signature mismatch"]
    assert line["signed_url"] == f"{BASE_URL}/hook"
    assert "447700900123" not in repr(logs)
    assert "private" not in repr(logs)
