"""Per-session Pipecat Flows: the /bot start envelope and the /ws flow file (contract §8.5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from pipecat_base.app import create_app
from pipecat_base.sessions.flows import FlowFileError, read_flow_file

from .process import BOTS

FLOW_BOT = str(BOTS / "flow_bot.py")
ENVELOPE = {"body": {"x": 1}, "flow_config": "f"}
UNICODE = '{"ünï": "cödé"}'
NOT_TEXT = "start envelope 'flow_config' must be non-empty text"
BIG_FLOW = "nodes:\n" + "".join(f"  n{i}: {{say: 'héllo {i}'}}\n" for i in range(12_000))


@pytest.fixture
def client(make_supervisor):
    seen = []

    async def bot(args):
        seen.append((args.body, args.flow_config))

    app = create_app(make_supervisor(bot))
    test_client = app.test_client()
    test_client.seen = seen
    return test_client


@pytest.mark.parametrize(
    ("marker", "body", "expected"),
    [
        (None, {"a": 1}, ({"a": 1}, None)),
        # Without the marker an envelope-looking body is passed on untouched.
        (None, ENVELOPE, (ENVELOPE, None)),
        ("1", {"body": {"x": 1}, "flow_config": "nodes: {}"}, ({"x": 1}, "nodes: {}")),
        ("1", {"body": None, "flow_config": UNICODE}, (None, UNICODE)),
        ("1", {"body": [], "flow_config": BIG_FLOW}, ([], BIG_FLOW)),
    ],
)  # fmt: skip
async def test_envelope_gives_the_bot_its_body_and_flow(client, marker, body, expected):
    headers = {"X-Pcc-Start-Envelope": marker} if marker else {}
    response = await client.post("/bot", json=body, headers=headers)
    assert response.status_code == 200
    assert client.seen == [expected]
    assert len(BIG_FLOW.encode()) > 256 * 1024


@pytest.mark.parametrize(
    ("marker", "body", "detail"),
    [
        ("2", {"body": {}, "flow_config": "f"}, "unsupported start envelope version '2'"),
        ("yes", {}, "unsupported start envelope version 'yes'"),
        ("1", {"body": {}}, "start envelope needs both 'body' and 'flow_config'"),
        ("1", {"flow_config": "f"}, "start envelope needs both 'body' and 'flow_config'"),
        ("1", {"body": {}, "flow_config": 5}, NOT_TEXT),
        ("1", {"body": {}, "flow_config": None}, NOT_TEXT),
        ("1", {"body": {}, "flow_config": " \n\t"}, NOT_TEXT),
    ],
)  # fmt: skip
async def test_envelope_refusals(client, marker, body, detail):
    response = await client.post("/bot", json=body, headers={"X-Pcc-Start-Envelope": marker})
    assert response.status_code == 400
    assert await response.get_json() == {"detail": detail}
    assert client.seen == []


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "session-files"
    d.mkdir()
    (d / "good.yaml").write_text(BIG_FLOW, encoding="utf-8")
    (d / "secret-empty.yaml").write_text("   \n")
    (d / "latin1.yaml").write_bytes("nodes: caf\xe9 SECRET-CONTENT".encode("latin-1"))
    (d / "a-dir").mkdir()
    os.mkfifo(d / "fifo")
    (tmp_path / "outside.yaml").write_text("SECRET-CONTENT")
    (d / "link.yaml").symlink_to(tmp_path / "outside.yaml")
    return d


def test_flow_file_reads_a_regular_utf8_file(files):
    assert read_flow_file(str(files), "good.yaml") == BIG_FLOW


@pytest.mark.parametrize(
    ("directory", "name", "message"),
    [
        (None, "good.yaml", "PCC_SESSION_FILES_DIR is not set"),
        ("", "good.yaml", "PCC_SESSION_FILES_DIR is not set"),
        ("D", "", "'' is not a bare filename"),
        ("D", ".", "'.' is not a bare filename"),
        ("D", "..", "'..' is not a bare filename"),
        ("D", "../outside.yaml", "'../outside.yaml' is not a bare filename"),
        ("D", "a\\b", "'a\\\\b' is not a bare filename"),
        ("D", "a\0b", "'a\\x00b' is not a bare filename"),
        ("D", "missing.yaml", "cannot read D/missing.yaml: No such file or directory"),
        ("D", "link.yaml", "cannot read D/link.yaml: Too many levels of symbolic links"),
        ("D", "fifo", "D/fifo is not a regular file"),
        ("D", "a-dir", "D/a-dir is not a regular file"),
        ("D", "latin1.yaml", "D/latin1.yaml is not UTF-8 text"),
        ("D", "secret-empty.yaml", "D/secret-empty.yaml is empty"),
    ],
)
def test_flow_file_refusals(files, directory, name, message):
    directory = str(files) if directory == "D" else directory
    with pytest.raises(FlowFileError) as info:
        read_flow_file(directory, name)
    assert str(info.value) == message.replace("D/", f"{files}/")
    assert "SECRET-CONTENT" not in str(info.value)
    # No chained exception to leak through a traceback: nothing caused, nothing shown.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


async def test_ws_flow_file_reaches_the_bot(serve_bot, files):
    headers = [("X-Pcc-Flow-Config-File", "good.yaml")]
    async with serve_bot(FLOW_BOT, PCC_SESSION_FILES_DIR=str(files)) as served:
        async with open_websocket_url(served.ws_url, extra_headers=headers) as ws:
            with trio.fail_after(10):
                report = json.loads(await ws.get_message())
    assert report == {"body": None, "flow_config": BIG_FLOW}


async def test_ws_without_flow_header_has_flow_config_none(serve_bot):
    async with serve_bot(FLOW_BOT) as served, open_websocket_url(served.ws_url) as ws:
        with trio.fail_after(10):
            assert json.loads(await ws.get_message()) == {"body": None, "flow_config": None}


@pytest.mark.parametrize("name", ["fifo", "link.yaml", "latin1.yaml", "../outside.yaml", "nope"])
async def test_ws_flow_file_refusal_rejects_the_handshake_before_the_bot_runs(
    serve_bot, files, logs, name
):
    headers = [("X-Pcc-Flow-Config-File", name), ("X-Daily-Session-Id", "flow-sid")]
    async with serve_bot(FLOW_BOT, PCC_SESSION_FILES_DIR=str(files)) as served:
        with trio.fail_after(10), pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(served.ws_url, extra_headers=headers):
                pass
    assert rejected.value.status_code == 403
    (refusal,) = logs.having("Refusing websocket session")
    assert refusal[:2] == ("ERROR", "flow-sid")
    assert refusal[2].startswith(
        "Refusing websocket session flow-sid: X-Pcc-Flow-Config-File names a file this app "
        "cannot use: "
    )
    assert "SECRET-CONTENT" not in logs.text
    assert not logs.having("Starting bot session")


async def test_ws_flow_file_refused_when_directory_unset(serve_bot, logs):
    headers = [("X-Pcc-Flow-Config-File", "good.yaml")]
    async with serve_bot(FLOW_BOT) as served:
        with pytest.raises(ConnectionRejected):
            async with open_websocket_url(served.ws_url, extra_headers=headers):
                pass
    assert logs.having("cannot use: PCC_SESSION_FILES_DIR is not set")
