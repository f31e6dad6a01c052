"""The speedups seam: one switch, per-name bisecting, version bounds, and the stock path."""

from __future__ import annotations

import hypercorn.trio.run
import hypercorn.trio.tcp_server
import pytest
from loguru import logger

from pipecat_base import _speedups as speedups
from pipecat_base._speedups import checkpoints
from pipecat_base._speedups.tcp_server import LeanTaskGroup, LeanTCPServer
from pipecat_base.config import ConfigError, load_settings

STOCK_SERVER = speedups._STOCK_TCP_SERVER
STOCK_GROUP = speedups._STOCK_TASK_GROUP
ALL = frozenset(speedups.NAMES)


@pytest.mark.parametrize("raw", [None, "", "1", "on", "ALL", " true "])
def test_unset_or_on_selects_every_speedup(raw):
    assert speedups.parse(raw) == ALL


@pytest.mark.parametrize("raw", ["0", "off", "none", "False"])
def test_zero_or_off_selects_none(raw):
    assert speedups.parse(raw) == frozenset()


def test_leading_minus_leaves_those_off_for_bisecting():
    assert speedups.parse("-ws_frames, -frame_writer") == ALL - {"ws_frames", "frame_writer"}


def test_plain_names_select_only_those():
    assert speedups.parse("tcp_server,app_inbox") == {"tcp_server", "app_inbox"}


def test_an_unknown_name_is_refused_naming_it_and_the_speedups():
    with pytest.raises(ValueError, match="no speedup named wsframes") as caught:
        speedups.parse("-wsframes")
    assert "tcp_server" in str(caught.value)


def test_minus_and_plain_names_mixed_are_refused():
    with pytest.raises(ValueError, match="not both"):
        speedups.parse("tcp_server,-ws_frames")


def test_a_bad_selection_fails_startup_naming_the_variable():
    with pytest.raises(ConfigError, match="PIPECAT_BASE_SPEEDUPS='nope'"):
        load_settings({"PIPECAT_BASE_SPEEDUPS": "nope"})
    assert load_settings({"PIPECAT_BASE_SPEEDUPS": "-ws_frames"}).speedups == "-ws_frames"


def test_off_puts_hypercorns_stock_classes_and_trios_operations_back(engaged):
    assert engaged("1") == ALL
    assert hypercorn.trio.run.TCPServer is LeanTCPServer
    assert hypercorn.trio.tcp_server.TaskGroup is LeanTaskGroup
    assert speedups.acquire is checkpoints.acquire
    assert engaged("0") == frozenset()
    assert hypercorn.trio.run.TCPServer is STOCK_SERVER
    assert hypercorn.trio.tcp_server.TaskGroup is STOCK_GROUP
    assert speedups.acquire is speedups._stock_acquire
    assert speedups.send is speedups._stock_send


def test_installing_twice_is_the_same_as_once(engaged):
    assert engaged("1") == engaged("1") == speedups.engaged() == ALL
    assert hypercorn.trio.run.TCPServer is LeanTCPServer


def test_the_interface_answers_stock_for_a_speedup_that_is_off(engaged):
    engaged("0")

    async def receive() -> dict:
        return {}

    assert speedups.inbox_of(receive) is None
    assert speedups.frame_writer_of(receive) is None
    app_class = speedups.app_class(object)  # type: ignore[arg-type]
    assert "url_map_class" not in vars(app_class)
    assert "asgi_http_class" not in vars(app_class)


@pytest.fixture
def warnings():
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING")
    yield seen
    logger.remove(sink)


def test_a_library_outside_the_verified_range_disengages_its_speedups_with_one_warning(
    engaged, warnings
):
    engaged("1")  # restored by the fixture afterwards

    def versions(distribution: str) -> str | None:
        return "3.2.0" if distribution == "werkzeug" else speedups.installed_version(distribution)

    running = speedups.install("1", version_of=versions)
    assert running == ALL - {"route_matching"}
    assert warnings == [
        "Speedup route_matching is off: werkzeug 3.2.0 is outside the versions it was verified "
        "on (>=3.0,<3.2); running the stock path (PIPECAT_BASE_SPEEDUPS to choose)"
    ]


def test_a_missing_or_unreadable_version_disengages_too():
    assert "not installed" in (speedups.unverified("ws_frames", lambda _name: None) or "")
    assert speedups.unverified("ws_frames", lambda _name: "not-a-version") is not None
    assert speedups.unverified("ws_frames", speedups.installed_version) is None


def test_every_speedup_is_verified_on_the_locked_libraries():
    assert {name for name in speedups.NAMES if speedups.unverified(name)} == set()
