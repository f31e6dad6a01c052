"""``GET|HEAD /pcc/capabilities`` (contract §8.1)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import httpx
import pytest

from pipecat_base.app import create_app
from pipecat_base.startup.capabilities import CapabilityError, build_document, clean_text, validate
from pipecat_base.startup.compat import unbuildable
from pipecat_base.startup.features import CAPABILITIES, Feature, detect

from .conftest import PIPECAT
from .process import BOTS


@dataclasses.dataclass
class FakeWebRTC:
    """pipecatcloud's SmallWebRTC session type, as far as building one goes."""

    session_id: str | None = None
    body: object = None
    webrtc_connection: object = None


def test_document_for_the_installed_packages():
    document = json.loads(build_document(f for f in detect() if f.name in CAPABILITIES))
    daily = importlib.util.find_spec("daily") is not None
    expected_daily = {"available": True} if daily else {
        "available": False, "reason": "No module named 'daily'"}  # fmt: skip
    assert document == {
        "version": 1,
        "capabilities": {
            "transport.daily": expected_daily,
            "transport.websocket": {"available": True},
            "transport.webrtc": {"available": True} if PIPECAT else {
                "available": False,
                "reason": "No module named 'aiortc' (needs pipecat-ai with the webrtc extra)",
            },
            "transport.moq": {"available": True} if PIPECAT else {
                "available": False, "reason": "pipecat-ai is not installed"},
            "whatsapp": {
                "available": False,
                "reason": "Missing environment variables: WHATSAPP_TOKEN, "
                "WHATSAPP_PHONE_NUMBER_ID, WHATSAPP_APP_SECRET" if PIPECAT else
                "Requires SmallWebRTC (transport.webrtc) to be enabled",
            },
        },
    }  # fmt: skip


def _settings(**env):
    from pipecat_base.config import load_settings

    return load_settings(env)


def _finder(missing: set[str]):
    return lambda name: None if name in missing else object()


@pytest.mark.parametrize(
    ("missing", "webrtc_type", "env", "webrtc", "whatsapp"),
    [
        (
            set(),
            lambda: FakeWebRTC,
            {"WHATSAPP_TOKEN": "t", "WHATSAPP_PHONE_NUMBER_ID": "1", "WHATSAPP_APP_SECRET": "s"},
            None,
            None,
        ),
        (
            set(),
            lambda: FakeWebRTC,
            {"WHATSAPP_TOKEN": "t"},
            None,
            "Missing environment variables: WHATSAPP_PHONE_NUMBER_ID, WHATSAPP_APP_SECRET",
        ),
        (
            {"aiortc"},
            lambda: FakeWebRTC,
            {},
            "No module named 'aiortc' (needs pipecat-ai with the webrtc extra)",
            "Requires SmallWebRTC (transport.webrtc) to be enabled",
        ),
        (
            set(),
            lambda: None,
            {},
            "pipecatcloud.agent has no SmallWebRTCSessionArguments (pipecatcloud)",
            "Requires SmallWebRTC (transport.webrtc) to be enabled",
        ),
        (
            {"pipecat.transports.whatsapp.client"},
            lambda: FakeWebRTC,
            {"WHATSAPP_TOKEN": "t"},
            None,
            "No module named 'pipecat.transports.whatsapp.client'",
        ),
    ],
)
def test_webrtc_and_whatsapp_detection(missing, webrtc_type, env, webrtc, whatsapp):
    found = {f.name: f for f in detect(_finder(missing), settings=_settings(**env),
                                       webrtc_type=webrtc_type)}  # fmt: skip
    assert (found["transport.webrtc"].available, found["transport.webrtc"].reason) == (
        webrtc is None, webrtc)  # fmt: skip
    assert (found["whatsapp"].available, found["whatsapp"].reason) == (
        whatsapp is None, whatsapp)  # fmt: skip


def test_serialised_compact_with_sorted_keys():
    body = build_document([Feature("b", True), Feature("a", False, "why")])
    assert body == (
        b'{"capabilities":{"a":{"available":false,"reason":"why"},'
        b'"b":{"available":true}},"version":1}'
    )


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("  two\n  lines\t here ", "two lines here"),
        ("see [docs]", "see (docs)"),
        ("café", "caf\\xe9"),
        ("lone \ud800", "lone \\ud800"),
        ("bell\x07", "bell?"),
        ("x" * 300, "x" * 253 + "..."),
    ],
)
def test_text_cleaning(text, cleaned):
    assert clean_text(text) == cleaned


@pytest.mark.parametrize(
    "document",
    [
        {"version": 1},
        {"version": True, "capabilities": {}},
        {"version": "1", "capabilities": {}},
        {"version": 1, "capabilities": {"Bad Name": {"available": True}}},
        {"version": 1, "capabilities": {"a" * 64: {"available": True}}},
        {"version": 1, "capabilities": {f"c{i}": {"available": True} for i in range(65)}},
        {"version": 1, "capabilities": {"a": {"available": 1}}},
        {"version": 1, "capabilities": {"a": {"available": True, "extra": 1}}},
        {"version": 1, "capabilities": {"a": {"available": False, "reason": "[x]"}}},
        {"version": 1, "capabilities": {"a": {"available": False, "reason": "é"}}},
        {"version": 1, "capabilities": {"a": {"available": False, "reason": "x" * 257}}},
        {"version": 1, "capabilities": {}, "extra": 1},
    ],
)
def test_validation_rejects(document):
    with pytest.raises(CapabilityError):
        validate(document)


def test_empty_reason_gets_a_fallback():
    assert json.loads(build_document([Feature("x", False, "  ")]))["capabilities"] == {
        "x": {"available": False, "reason": "x is unavailable"}
    }


@pytest.mark.parametrize(
    ("method", "status", "headers", "empty"),
    [
        ("GET", 200, {"content-type": "application/json", "cache-control": "no-store"}, False),
        ("HEAD", 200, {"content-type": "application/json", "cache-control": "no-store"}, True),
        ("POST", 405, {"allow": "GET, HEAD", "content-length": "0"}, True),
        ("PUT", 405, {"allow": "GET, HEAD"}, True),
        ("DELETE", 405, {"allow": "GET, HEAD"}, True),
        ("PATCH", 405, {"allow": "GET, HEAD"}, True),
    ],
)
async def test_methods_statuses_and_headers(serve_bot, method, status, headers, empty):
    async with serve_bot(str(BOTS / "raw_ws_bot_iter.py")) as served:
        async with httpx.AsyncClient() as client:
            response = await client.request(method, f"{served.url}/pcc/capabilities")
    assert response.status_code == status
    for name, value in headers.items():
        assert response.headers[name] == value
    assert (response.content == b"") is empty
    if method in ("GET", "HEAD"):
        length = len(served.server.runtime.capabilities)
        assert response.headers["content-length"] == str(length)
        if method == "GET":
            assert response.content == served.server.runtime.capabilities


async def test_a_document_that_cannot_be_built_answers_404_to_every_method(make_supervisor):
    client = create_app(make_supervisor(lambda args: None), capabilities=None).test_client()
    for method in ("GET", "HEAD", "POST"):
        response = await client.open("/pcc/capabilities", method=method)
        assert response.status_code == 404
        assert await response.get_data() == b""


async def test_trailing_slash_is_not_the_capability_path(make_supervisor):
    client = create_app(make_supervisor(lambda args: None), capabilities=b"{}").test_client()
    assert (await client.get("/pcc/capabilities/")).status_code == 404


@dataclasses.dataclass
class UnbuildableWebRTC(FakeWebRTC):
    """As pipecatcloud's type with a pipecat whose base class lost ``__post_init__``."""

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]


def test_a_session_type_that_does_not_build_is_reported_unavailable_with_why():
    found = {f.name: f for f in detect(_finder(set()), settings=_settings(),
                                       webrtc_type=lambda: UnbuildableWebRTC)}  # fmt: skip
    webrtc = found["transport.webrtc"]
    assert not webrtc.available
    assert "cannot build the SmallWebRTCSessionArguments this image hands bot()" in webrtc.reason
    assert "'super' object has no attribute '__post_init__'" in webrtc.reason
    assert found["whatsapp"].reason == "Requires SmallWebRTC (transport.webrtc) to be enabled"
    document = json.loads(build_document(f for f in found.values() if f.name in CAPABILITIES))
    assert document["capabilities"]["transport.webrtc"]["available"] is False


def test_a_moq_session_type_that_does_not_build_is_a_reason_too():
    reason = unbuildable("MOQSessionArguments", UnbuildableWebRTC)
    assert reason is not None
    assert "cannot build the MOQSessionArguments this image hands bot()" in reason


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_an_image_without_smallwebrtc_refuses_offers_saying_why(make_supervisor, method):
    async def bot(args):
        raise AssertionError("no session may start")

    app = create_app(make_supervisor(bot), webrtc_unavailable="the reason")
    response = await app.test_client().open("/api/offer", method=method, json={"sdp": "x"})
    assert response.status_code == 404
    assert await response.get_json() == {
        "detail": "SmallWebRTC sessions are unavailable in this image: the reason"
    }
