"""The structured log lane: records, capture, attribution (contract §7.2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import trio

from pipecat_base.observability.attribution import Attribution
from pipecat_base.observability.capture import MAX_LINE, TRUNCATED, LineAssembler
from pipecat_base.observability.lane import PLACEHOLDER, JsonlFile, encode_record, open_jsonl

from .process import BOTS, server_process

BOT = BOTS / "lane_bot.py"


def records(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "bot.jsonl").read_text().splitlines()]


def find(recs: list[dict], line: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "@timestamp"} for r in recs if r["line"] == line]


@pytest.mark.slow
async def test_records_streams_levels_sessions_and_console_unchanged(tmp_path):
    log_dir = tmp_path / "logs"
    async with server_process(BOT, env={"PCC_LOG_DIR": str(log_dir)}, capture_stdout=True) as s:
        async with httpx.AsyncClient(timeout=30) as client:
            await client.post(f"{s.url}/bot", json={}, headers={"X-Daily-Session-Id": "lane-1"})
            await trio.sleep(0.5)  # past the 0.25 s linger
            await client.get(f"{s.url}/readyz")
        s.signal()
    recs = records(log_dir)
    assert find(recs, "import print") == [{"stream": "stdout", "line": "import print"}]
    assert find(recs, "import stderr") == [{"stream": "stderr", "line": "import stderr"}]
    # Written through loguru before the server configured logging: an app record all the same.
    assert find(recs, "import logger line") == [
        {"stream": "app", "level": "INFO", "line": "import logger line"}
    ]
    assert find(recs, "session log ünï") == [
        {"stream": "app", "level": "INFO", "session_id": "lane-1", "line": "session log ünï"}
    ]
    for stream, line in [("stdout", "session print"), ("stderr", "session stderr"),
                         ("stderr", "session native stderr")]:  # fmt: skip
        assert find(recs, line) == [{"stream": stream, "session_id": "lane-1", "line": line}]
    assert find(recs, "readyz print outside sessions") == [
        {"stream": "stdout", "line": "readyz print outside sessions"}
    ]
    assert "(CTRL + C to quit)" in " ".join(r["line"] for r in recs if r["stream"] == "app")
    for record in recs:
        assert record["@timestamp"][-6] in "+-"  # timezone-aware ISO-8601
    # What the console shows is unchanged, and everything reaches it exactly once.
    assert s.stdout.decode() == ("import print\nsession print\nreadyz print outside sessions\n")
    err = s.text
    for line in ("import stderr\n", "session stderr\n", "session native stderr\n"):
        assert err.count(line) == 1
    assert err.count("session log ünï") == 1


@pytest.mark.slow
async def test_last_words_before_os_exit_are_on_disk(tmp_path):
    log_dir = tmp_path / "logs"
    async with server_process(BOT, env={"PCC_LOG_DIR": str(log_dir)}) as s:
        async with httpx.AsyncClient(timeout=30) as client:
            with pytest.raises(httpx.HTTPError):
                await client.post(f"{s.url}/bot", json={"exit": True})
        with trio.fail_after(10):
            assert await s.wait_exit() == 17
    lines = [r["line"] for r in records(log_dir)]
    assert "last logger words" in lines
    assert "last printed words" in lines


@pytest.mark.slow
async def test_lane_off_means_no_file_no_capture_and_the_same_console(tmp_path):
    async with server_process(BOT, capture_stdout=True) as s:
        fd1 = os.readlink(f"/proc/{s.process.pid}/fd/1")
        async with httpx.AsyncClient(timeout=30) as client:
            await client.post(f"{s.url}/bot", json={})
        s.signal()
    assert fd1.startswith("pipe:")  # the harness's own pipe, not a capture in between
    assert list(tmp_path.iterdir()) == []
    assert s.stdout.decode() == "import print\nsession print\n"


@pytest.mark.slow
async def test_unusable_log_dir_turns_the_lane_off_and_the_server_serves(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    async with server_process(BOT, env={"PCC_LOG_DIR": str(blocker / "logs")}) as s:
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.post(f"{s.url}/bot", json={})).status_code == 200
        s.signal()
    assert s.text.count("structured log lane off: cannot use") == 1


@pytest.mark.parametrize(
    ("chunks", "lines", "rest"),
    [
        ([b"one\ntwo\n"], ["one", "two"], []),
        ([b"par", b"tial\n"], ["partial"], []),
        ([b"a\n\n\nb\n"], ["a", "", "", "b"], []),
        ([b"crlf\r\n"], ["crlf"], []),
        ([b"inner\rcarriage\n"], ["inner\rcarriage"], []),
        ([b"bad \xff\xfe utf8\n"], ["bad \ufffd\ufffd utf8"], []),
        ([b"split \xc3", b"\xa9 char\n"], ["split é char"], []),
        ([b"no newline"], [], ["no newline"]),
        ([b"x" * (MAX_LINE + 10) + b"\n"], ["x" * MAX_LINE + TRUNCATED], []),
    ],
)
def test_line_assembly(chunks, lines, rest):
    assembler = LineAssembler()
    got = [line for chunk in chunks for line in assembler.feed(chunk)]
    assert got == lines
    assert assembler.flush() == rest


def test_unserialisable_record_becomes_a_placeholder():
    line = encode_record(
        {
            "@timestamp": "2026-11-24T00:00:00+00:00",
            "stream": "app",
            "level": "INFO",
            "session_id": "s9",
            "line": "lone \ud800 surrogate",
        }
    )
    assert json.loads(line) == {
        "@timestamp": "2026-11-24T00:00:00+00:00",
        "stream": "app",
        "level": "ERROR",
        "line": PLACEHOLDER,
        "session_id": "s9",
    }


def test_rotation_keeps_one_rotated_file(tmp_path):
    jsonl = JsonlFile(tmp_path, rotate_bytes=1000)
    for i in range(40):
        jsonl.record("stdout", f"line {i:03d} " + "x" * 40)
    current = (tmp_path / "bot.jsonl").read_text().splitlines()
    rotated = (tmp_path / "bot.jsonl.1").read_text().splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bot.jsonl", "bot.jsonl.1"]
    assert json.loads(current[-1])["line"].startswith("line 039")
    assert len((tmp_path / "bot.jsonl").read_bytes()) <= 1000
    assert json.loads(rotated[-1])["line"] < json.loads(current[0])["line"]


def test_open_jsonl_failure_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert open_jsonl(str(tmp_path / "f" / "d")) is None
    assert capsys.readouterr().err.count("\n") == 1


def test_linger_and_takeover_in_virtual_time():
    now = [100.0]
    a = Attribution(clock=lambda: now[0])
    assert a.current() is None
    a.started("one")
    assert a.current() == "one"
    a.ended("one")
    now[0] += 0.2
    assert a.current() == "one"  # lingers for late output
    now[0] += 0.05
    assert a.current() is None  # 0.25 s later: nobody's
    a.started("two")
    a.ended("two")
    a.started("three")  # a new session takes over at once, linger or not
    assert a.current() == "three"
    a.started("four")
    assert a.current() == "four"  # concurrent: the newest running session
    a.ended("four")
    assert a.current() == "three"  # still running beats a lingering one
