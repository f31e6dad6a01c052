"""What this image can serve, detected once at startup.

Each optional feature is a pure detection over what is installed and what this server
implements; `/pcc/capabilities` (and, later, the feature summary) report from it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Feature:
    """One capability: available, or why not."""

    name: str
    available: bool
    reason: str | None = None


def _module_feature(name: str, module: str, find_spec: Callable[[str], Any]) -> Feature:
    if find_spec(module) is None:
        return Feature(name, False, f"No module named '{module}'")
    return Feature(name, True)


OBSERVERS = "observability.observers"
CAPABILITIES = ("transport.daily", "transport.websocket", "transport.webrtc", "whatsapp")


def _observers(find_spec: Callable[[str], Any]) -> Feature:
    for module in (
        "pipecat.observers.startup_timing_observer",
        "pipecat.observers.user_bot_latency_observer",
    ):
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is missing
            found = False
        if not found:
            return Feature(OBSERVERS, False, f"No module named '{module}' (pipecat-ai < 0.0.104)")
    return Feature(OBSERVERS, True)


def detect(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> list[Feature]:
    """The image's features, in a stable order. Modules are looked up, never imported."""
    return [
        _observers(find_spec),
        # Daily sessions reach the bot as a room URL and token; joining needs daily-python.
        _module_feature("transport.daily", "daily", find_spec),
        Feature("transport.websocket", True),
        Feature(
            "transport.webrtc", False, "SmallWebRTC sessions are not served by this server yet"
        ),
        Feature("whatsapp", False, "WhatsApp webhooks are not served by this server yet"),
    ]


def summary(features: list[Feature]) -> str:
    """The ``PCC_LOG_FEATURES_SUMMARY`` block: each feature, on or off, and why."""
    lines = ["=" * 60, "Features available in this base image:"]
    for feature in features:
        mark = "✅" if feature.available else "❌"
        lines.append(f"{mark} {feature.name}: {'ENABLED' if feature.available else 'DISABLED'}")
        if not feature.available and feature.reason:
            lines.append(f"   Reason: {feature.reason}")
    lines.append("=" * 60)
    return "\n".join(lines)
