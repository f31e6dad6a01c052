"""MoQ sessions: arguments, refusals, and the relay URL kept out of every text the server writes."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
import trio
from loguru import logger

from pipecat_base.app import create_app
from pipecat_base.observability.logs import configure_logging
from pipecat_base.sessions.args import build
from pipecat_base.startup.capabilities import build_document
from pipecat_base.startup.features import CAPABILITIES, MOQ, detect, moq_unavailable_reason
from pipecat_base.transports import moq

from .conftest import PIPECAT, needs_pipecat

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2Vzc2lvbg.sig-9f8e7d"
RELAY = f"https://relay.example.test:4443/moq?jwt={TOKEN}&region=us"
MOQ_HEADERS = {
    "X-Daily-Session-Id": "sess-moq",
    "X-Daily-Transport-Type": "moq",
    "X-Moq-Relay-Url": RELAY,
    "X-Moq-Namespace": "calls/sess-moq",
}


class Recorder:
    def __init__(self, fail: str | None = None) -> None:
        self.args: list[Any] = []
        self.fail = fail

    async def bot(self, args: Any) -> None:
        self.args.append(args)
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError(self.fail.format(relay=args.relay_url))


@pytest.fixture
def moq_client(make_supervisor):
    def make(bot, unavailable: str | None = None):
        app = create_app(make_supervisor(bot), moq_unavailable=unavailable)
        return app.test_client()

    return make


@pytest.fixture
def console() -> Any:
    """The real console sink (``configure_logging``), written to a buffer."""
    out = io.StringIO()
    configure_logging("DEBUG", sink=out)
    yield out
    logger.remove()


# -- the secret ----------------------------------------------------------------------------


def test_relay_secret_scrubs_the_url_its_query_and_long_values_decoded_too():
    secret = moq.RelaySecret(RELAY)
    assert secret.scrub(f"cannot reach {RELAY}") == "cannot reach <relay URL>"
    assert secret.scrub(f"query {TOKEN[:20]}") == f"query {TOKEN[:20]}"  # a prefix is no secret
    assert secret.scrub(f"token {TOKEN} leaked") == "token <relay URL> leaked"
    assert secret.scrub("jwt=" + TOKEN + "&region=us") == "<relay URL>"  # the query
    assert secret.scrub("region us is fine") == "region us is fine"  # short values stay
    encoded = moq.RelaySecret("wss://r.test/?t=a%2Fb%2Bc%3Dlonger&x=1#frag-secret-1")
    assert encoded.scrub("a/b+c=longer") == "<relay URL>"
    assert encoded.scrub("a%2Fb%2Bc%3Dlonger") == "<relay URL>"
    assert encoded.scrub("the frag-secret-1") == "the <relay URL>"
    assert repr(secret) == "RelaySecret(<relay URL>)"
    assert TOKEN not in repr(secret.scrub)


def test_relay_secret_replaces_an_unparsable_url_whole_and_withholds_unreadable_text():
    broken = "https://[relay-broken?jwt=" + TOKEN
    secret = moq.RelaySecret(broken)
    assert secret.scrub(f"x {broken} y") == "x <relay URL> y"

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert secret.scrub(Unprintable()) == moq.WITHHELD


# -- what the image can serve --------------------------------------------------------------


def test_no_moq_module_is_the_reason_moq_is_unavailable():
    if not PIPECAT:
        assert moq_unavailable_reason() == "pipecat-ai is not installed"
        return
    assert moq_unavailable_reason(lambda name: None) == (
        "No module named 'moq' (needs pipecat-ai's moq extra)"
    )


@needs_pipecat
def test_this_image_serves_moq_and_reports_it():
    assert moq_unavailable_reason() is None
    features = detect()
    document = json.loads(build_document(f for f in features if f.name in CAPABILITIES))
    assert document["capabilities"][MOQ] == {"available": True}


def test_capability_reports_moq_unavailable_with_its_reason():
    features = detect(moq_reason=lambda find_spec: "pipecatcloud 1.2.0 has no MOQSessionArguments")
    document = json.loads(build_document(f for f in features if f.name in CAPABILITIES))
    assert document["capabilities"][MOQ] == {
        "available": False,
        "reason": "pipecatcloud 1.2.0 has no MOQSessionArguments",
    }


# -- starting sessions ---------------------------------------------------------------------


@needs_pipecat
async def test_moq_start_runs_the_bot_with_moq_session_arguments(moq_client, logs):
    from pipecat.runner.types import MOQRunnerArguments
    from pipecatcloud.agent import MOQSessionArguments

    recorder = Recorder()
    client = moq_client(recorder.bot)
    response = await client.post("/bot", json={"lang": "fr"}, headers=MOQ_HEADERS)
    assert response.status_code == 200
    (args,) = recorder.args
    assert type(args) is MOQSessionArguments
    assert isinstance(args, MOQRunnerArguments)
    assert (args.session_id, args.relay_url, args.namespace) == (
        "sess-moq",
        RELAY,
        "calls/sess-moq",
    )
    assert (args.participant_id, args.peer_id) == ("response", "request")
    assert args.body == {"lang": "fr"}
    assert args.flow_config is None
    assert args.handle_sigint is False
    assert TOKEN not in repr(args)
    assert TOKEN not in logs.text


@needs_pipecat
async def test_moq_envelope_carries_the_flow(moq_client):
    recorder = Recorder()
    client = moq_client(recorder.bot)
    envelope = {"body": {"a": 1}, "flow_config": "nodes: {}"}
    response = await client.post(
        "/bot", json=envelope, headers={**MOQ_HEADERS, "X-Pcc-Start-Envelope": "1"}
    )
    assert response.status_code == 200
    (args,) = recorder.args
    assert (args.body, args.flow_config) == ({"a": 1}, "nodes: {}")


@needs_pipecat
@pytest.mark.parametrize(
    "change",
    [
        {"X-Moq-Relay-Url": None},
        {"X-Moq-Relay-Url": ""},
        {"X-Moq-Relay-Url": "   "},
        {"X-Moq-Namespace": None},
    ],
)
async def test_moq_start_without_relay_or_namespace_is_refused(moq_client, logs, change):
    recorder = Recorder()
    client = moq_client(recorder.bot)
    headers = {k: v for k, v in {**MOQ_HEADERS, **change}.items() if v is not None}
    response = await client.post("/bot", json={}, headers=headers)
    assert response.status_code == 400
    detail = (
        "Refusing MoQ session sess-moq: its start carries no relay URL or namespace "
        "(X-Moq-Relay-Url, X-Moq-Namespace)"
    )
    assert await response.get_json() == {"detail": detail}
    assert recorder.args == []
    assert logs.having("Refusing MoQ session sess-moq") == [("ERROR", "sess-moq", detail)]
    assert TOKEN not in logs.text


async def test_image_without_moq_refuses_before_reading_the_headers(moq_client, logs):
    recorder = Recorder()
    client = moq_client(recorder.bot, unavailable="No module named 'moq'")
    headers = {k: v for k, v in MOQ_HEADERS.items() if k != "X-Moq-Namespace"}
    response = await client.post("/bot", json={}, headers=headers)
    assert response.status_code == 400
    detail = "Refusing MoQ session sess-moq: No module named 'moq'"
    assert await response.get_json() == {"detail": detail}
    assert recorder.args == []
    assert TOKEN not in logs.text


@needs_pipecat
async def test_arguments_that_do_not_build_are_refused_with_the_url_scrubbed(logs):
    def failing_build(cls: type, **fields: Any) -> Any:
        raise ValueError(f"bad relay {fields['relay_url']}")

    with pytest.raises(moq.MoqRefused) as refused:
        moq.session_args("s", {}, MOQ_HEADERS, unavailable=None, build=failing_build)
    assert str(refused.value) == (
        "Refusing MoQ session s: its session arguments did not build "
        "(ValueError: bad relay <relay URL>)"
    )
    assert refused.value.__context__ is None  # no chained exception with the raw text


async def test_moq_headers_are_ignored_without_the_moq_transport_type(moq_client):
    recorder = Recorder()
    client = moq_client(recorder.bot, unavailable="No module named 'moq'")
    headers = {k: v for k, v in MOQ_HEADERS.items() if k != "X-Daily-Transport-Type"}
    response = await client.post("/bot", json={}, headers=headers)
    assert response.status_code == 200
    (args,) = recorder.args
    assert type(args).__name__.endswith("PipecatSessionArguments")
    assert not hasattr(args, "relay_url")


@needs_pipecat
async def test_a_failing_moq_bot_is_logged_with_the_relay_url_scrubbed(moq_client, console):
    recorder = Recorder(fail="cannot reach {relay}")

    client = moq_client(recorder.bot)
    response = await client.post("/bot", json={}, headers=MOQ_HEADERS)
    assert response.status_code == 200
    text = console.getvalue()
    assert "sess-moq - Exception running bot(): cannot reach <relay URL>" in text
    assert "ConnectionError: cannot reach <relay URL>" in text  # the traceback, scrubbed too
    assert "Traceback (most recent call last)" in text
    assert TOKEN not in text
    assert RELAY not in text


@needs_pipecat
async def test_what_the_bot_logs_in_a_moq_session_is_scrubbed_but_not_elsewhere(
    moq_client, console
):
    async def chatty(args: Any) -> None:
        logger.info(f"dialing {args.relay_url}")
        logger.info("dialing {}", args.relay_url)  # formatted by loguru, after any patcher

    client = moq_client(chatty)
    await client.post("/bot", json={}, headers=MOQ_HEADERS)
    logger.info(f"outside a session: {TOKEN}")
    text = console.getvalue()
    assert text.count("dialing <relay URL>") == 2
    assert text.count(TOKEN) == 1  # only the line logged outside the session


@needs_pipecat
def test_pipecats_create_transport_takes_the_arguments():
    from pipecat.runner.utils import create_transport
    from pipecat.transports.base_transport import TransportParams
    from pipecat.transports.moq.transport import MOQTransport

    args, _ = moq.session_args("s", {}, MOQ_HEADERS, unavailable=None, build=build)

    async def make() -> Any:
        params = TransportParams(audio_in_sample_rate=16000, audio_out_sample_rate=16000)
        return await create_transport(args, {"moq": lambda: params})

    transport = asyncio.run(make())
    assert isinstance(transport, MOQTransport)
    assert transport._params.relay_url == RELAY
    assert transport._params.namespace == "calls/sess-moq"


async def test_unavailable_reason_defaults_to_no_support(make_supervisor):
    recorder = Recorder()
    client = create_app(make_supervisor(recorder.bot)).test_client()
    response = await client.post("/bot", json={}, headers=MOQ_HEADERS)
    assert (await response.get_json())["detail"] == (
        "Refusing MoQ session sess-moq: this image reports no MoQ support"
    )


@needs_pipecat
@pytest.mark.slow
async def test_a_real_moq_bot_dials_the_relay_and_its_token_never_reaches_the_logs():
    import httpx

    from .process import BOTS, server_process

    # The relay: a UDP socket of 127.0.0.1 that takes the QUIC handshake and never answers.
    relay = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await relay.bind(("127.0.0.1", 0))
    relay_url = f"https://127.0.0.1:{relay.getsockname()[1]}/moq?jwt={TOKEN}"
    headers = {**MOQ_HEADERS, "X-Moq-Relay-Url": relay_url, "X-PCC-Max-Session-Seconds": "2"}
    async with server_process(BOTS / "moq_bot.py") as server:
        async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:

            async def start() -> None:
                response = await client.post(f"{server.url}/bot", json={}, headers=headers)
                assert (response.status_code, response.json()) == (200, {})

            nursery.start_soon(start)
            with trio.fail_after(20):
                packet, _ = await relay.recvfrom(65535)
            assert packet[0] & 0xC0 == 0xC0  # a QUIC long-header packet: the handshake began
        server.signal()
    relay.close()
    text = server.text
    assert "sess-moq - bot dials <relay URL> in namespace calls/sess-moq" in text
    assert "MOQ: connecting to" in text  # pipecat's own line, scrubbed with the rest
    assert "Bot session stopped: maximum session duration reached (2s)" in text
    assert TOKEN not in text


def test_startup_warns_when_the_moq_extra_is_installed_but_moq_is_unavailable():
    found = {"moq": object()}.get
    reason = "pipecatcloud 1.2.0 has no MOQSessionArguments"
    assert moq.startup_warning(reason, found) == (
        "pipecat-ai's moq extra is installed, but pipecatcloud 1.2.0 has no MOQSessionArguments: "
        "the image reports MoQ sessions unavailable."
    )
    assert moq.startup_warning(None, found) is None  # served
    assert moq.startup_warning(reason, lambda name: None) is None  # no extra: nothing to say
