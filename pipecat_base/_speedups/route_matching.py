"""Quart's URL map, with its matches of argument-free routes remembered.

werkzeug's rule matcher (``StateMachineMatcher.match``) defines a recursive function on every
call, which refers to itself through its closure: each request leaves a small reference cycle
(~8 objects) that only the garbage collector frees. On ``POST /bot`` that was nearly all the
cyclic garbage a request left, so it set the pace of the collector's young collections (14-19
per 1000 sequential sessions, ~0.1-0.2 ms each, which land in the round trip's tail).

`RememberingMatcher` answers a path it has already matched to a rule without arguments (every
route this server defines: ``/bot``, ``/ws``, ``/livez``, ...) from a small table, and asks
werkzeug otherwise. What is remembered is exactly what werkzeug answered for the same host
part, path, method and websocket flag; failures (404, 405, redirects) are never remembered, and
the table is emptied whenever the rules change. `RememberingMap` is Quart's map with this
matcher (``url_map_class``); should werkzeug lay its map out otherwise, it is Quart's map
unchanged.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from quart.routing import QuartMap
from werkzeug.routing import Rule
from werkzeug.routing.matcher import StateMachineMatcher

# Successful matches only, so the keys are bounded by the rules unless the map matches on the
# Host header (``host_matching``); the bound keeps that case small too.
REMEMBERED_AT_MOST = 64


class RememberingMatcher(StateMachineMatcher):
    """werkzeug's matcher, remembering the matches of rules without arguments."""

    def __init__(self, merge_slashes: bool) -> None:
        self._remembered: dict[tuple[str, str, str, bool], Rule] = {}
        super().__init__(merge_slashes)

    @property
    def remembered(self) -> int:
        """How many matches are remembered now."""
        return len(self._remembered)

    @property
    def merge_slashes(self) -> bool:
        return self._merge_slashes

    @merge_slashes.setter
    def merge_slashes(self, value: bool) -> None:
        self._merge_slashes = value
        self._remembered.clear()

    def add(self, rule: Rule) -> None:
        self._remembered.clear()
        super().add(rule)

    def update(self) -> None:
        self._remembered.clear()
        super().update()

    def match(
        self, domain: str, path: str, method: str, websocket: bool
    ) -> tuple[Rule, MutableMapping[str, Any]]:
        key = (domain, path, method, websocket)
        rule = self._remembered.get(key)
        if rule is not None:
            return rule, {}  # a fresh dict: the caller may change the one it gets
        rule, values = super().match(domain, path, method, websocket)
        if not values:  # no arguments, defaults or converted parts: the answer is the rule
            if len(self._remembered) >= REMEMBERED_AT_MOST:
                self._remembered.clear()
            self._remembered[key] = rule
        return rule, values


class RememberingMap(QuartMap):
    """Quart's URL map with a `RememberingMatcher`."""

    def __init__(self, rules: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(None, *args, **kwargs)
        # ``_matcher`` is werkzeug's (2.2 and newer); the rules are added after the swap, so
        # they are all in the matcher that answers.
        if type(getattr(self, "_matcher", None)) is StateMachineMatcher:
            self._matcher = RememberingMatcher(self._matcher.merge_slashes)
        for rule in rules or ():
            self.add(rule)
