"""URL matching that remembers argument-free routes: werkzeug's answers, without its garbage."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from quart.routing import QuartMap
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.routing.exceptions import RoutingException

from pipecat_base._speedups.route_matching import (
    REMEMBERED_AT_MOST,
    RememberingMap,
    RememberingMatcher,
)
from pipecat_base.app import create_app


def rules() -> list[Rule]:
    return [
        Rule("/bot", methods=["POST"], endpoint="bot"),
        Rule("/livez", endpoint="livez"),
        Rule("/ws", websocket=True, endpoint="ws"),
        Rule("/items/<int:n>", endpoint="item"),
        Rule("/dir/", endpoint="dir"),
        Rule("/page", defaults={"p": 1}, endpoint="page"),
        Rule("/old", redirect_to="/bot", endpoint="old"),
    ]


REQUESTS = [
    ("/bot", "POST", False),
    ("/bot", "GET", False),  # 405
    ("/livez", "GET", False),
    ("/livez", "HEAD", False),
    ("/livez", "POST", False),  # a rule without methods takes any
    ("/ws", "GET", True),
    ("/ws", "GET", False),  # a websocket route asked over HTTP
    ("/bot", "POST", True),  # an HTTP route asked over a websocket
    ("/items/3", "GET", False),
    ("/items/x", "GET", False),  # 404: the converter refuses
    ("/dir", "GET", False),  # redirect to the slash
    ("/dir/", "GET", False),
    ("/page", "GET", False),  # defaults become values
    ("/old", "GET", False),  # redirect_to
    ("//bot", "POST", False),  # merged slashes: redirect
    ("/nope", "GET", False),  # 404
]


def outcome(url_map: Map, path: str, method: str, websocket: bool) -> Any:
    adapter = url_map.bind("localhost")
    try:
        rule, values = adapter.match(path, method, return_rule=True, websocket=websocket)
    except RoutingException as exc:  # redirects
        return type(exc).__name__, getattr(exc, "new_url", None)
    except HTTPException as exc:
        return type(exc).__name__, exc.code
    return rule.endpoint, dict(values)


def matcher_of(url_map: Map) -> RememberingMatcher:
    matcher = url_map._matcher  # type: ignore[attr-defined]
    assert isinstance(matcher, RememberingMatcher)
    return matcher


def test_every_answer_is_werkzeugs_whether_asked_once_or_again():
    stock, ours = QuartMap(rules()), RememberingMap(rules())
    for _ in range(3):  # first from werkzeug, then from what was remembered
        for request in REQUESTS:
            assert outcome(ours, *request) == outcome(stock, *request), request
    # Remembered: the argument-free matches only (/bot POST, /livez GET, HEAD and POST, /ws,
    # /dir/, and /old, whose redirect the adapter makes after the match), not the converted,
    # defaulted, redirected or failed ones.
    assert matcher_of(ours).remembered == 7


def test_the_caller_may_change_the_values_it_gets():
    url_map = RememberingMap(rules())
    adapter = url_map.bind("localhost")
    first = adapter.match("/bot", "POST")[1]
    first["changed"] = True
    assert adapter.match("/bot", "POST") == ("bot", {})


def test_changing_the_rules_forgets_what_was_remembered():
    url_map = RememberingMap(rules())
    outcome(url_map, "/bot", "POST", False)
    assert matcher_of(url_map).remembered == 1
    url_map.add(Rule("/bot", methods=["GET"], endpoint="bot-get"))
    assert matcher_of(url_map).remembered == 0
    assert outcome(url_map, "/bot", "GET", False) == ("bot-get", {})
    outcome(url_map, "/bot", "POST", False)
    url_map.merge_slashes = False
    assert matcher_of(url_map).remembered == 0
    assert outcome(url_map, "//bot", "POST", False) == outcome(
        QuartMap(rules(), merge_slashes=False), "//bot", "POST", False
    )


def test_what_is_remembered_stays_bounded_when_the_host_is_matched():
    hosts = [f"h{i}.example" for i in range(3 * REMEMBERED_AT_MOST)]
    url_map = RememberingMap(
        [Rule("/bot", host=host, endpoint=host) for host in hosts], host_matching=True
    )
    for host in hosts:
        assert url_map.bind(host).match("/bot") == (host, {})
        assert matcher_of(url_map).remembered <= REMEMBERED_AT_MOST


@contextmanager
def cyclic_garbage() -> Iterator[list[Any]]:
    """What the collector finds unreachable while the block runs."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[Any] = []
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize(("map_class", "cycles"), [(QuartMap, 50), (RememberingMap, 0)])
def test_matching_a_route_leaves_no_reference_cycle(map_class, cycles):
    # werkzeug's matcher makes a self-referring closure per match: the premise of the module.
    url_map = map_class(rules())
    adapter = url_map.bind("localhost")
    adapter.match("/bot", "POST")
    with cyclic_garbage() as garbage:
        for _ in range(50):
            adapter.match("/bot", "POST")
    closures = [o for o in garbage if getattr(o, "__name__", None) == "_match"]
    assert len(closures) == cycles


async def test_the_server_matches_its_routes_with_a_remembering_map(make_supervisor, engaged):
    engaged("route_matching")

    async def bot(args: Any) -> None:
        pass

    app = create_app(make_supervisor(bot))
    client = app.test_client()
    for _ in range(2):
        assert (await client.post("/bot", json={})).status_code == 200
        assert (await client.get("/livez")).status_code == 200
    assert isinstance(app.url_map, RememberingMap)
    assert matcher_of(app.url_map).remembered == 2


async def test_with_the_speedup_off_the_server_uses_quarts_own_map(make_supervisor, engaged):
    engaged("-route_matching")

    async def bot(args: Any) -> None:
        pass

    app = create_app(make_supervisor(bot))
    assert (await app.test_client().post("/bot", json={})).status_code == 200
    assert type(app.url_map) is QuartMap
