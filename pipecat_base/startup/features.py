"""What this image can serve, detected once at startup.

Each optional feature is a pure detection over what is installed and what this server
implements; `/pcc/capabilities` (and, later, the feature summary) report from it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipecat_base.config import load_settings
from pipecat_base.sessions.args import moq_session_type, webrtc_session_type
from pipecat_base.startup.compat import installed_name, unbuildable


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
MOQ = "transport.moq"
MOQ_CHECK_DID_NOT_RUN = "the MoQ check did not run"
CAPABILITIES = ("transport.daily", "transport.websocket", "transport.webrtc", MOQ, "whatsapp")


def _observers(find_spec: Callable[[str], Any]) -> Feature:
    for module in (
        "pipecat.observers.startup_timing_observer",
        "pipecat.observers.user_bot_latency_observer",
    ):
        if not module_found(find_spec, module):
            return Feature(OBSERVERS, False, f"No module named '{module}' (pipecat-ai < 0.0.104)")
    return Feature(OBSERVERS, True)


WEBRTC = "transport.webrtc"
WHATSAPP = "whatsapp"
WEBRTC_MODULES = ("aiortc", "pipecat.transports.smallwebrtc.request_handler")
WHATSAPP_MODULE = "pipecat.transports.whatsapp.client"
WHATSAPP_SETTINGS = {
    "WHATSAPP_TOKEN": "whatsapp_token",
    "WHATSAPP_PHONE_NUMBER_ID": "whatsapp_phone_number_id",
    "WHATSAPP_APP_SECRET": "whatsapp_app_secret",
}


def module_found(find_spec: Callable[[str], Any], module: str) -> bool:
    """Whether ``find_spec`` finds ``module`` (False when its parent package is missing)."""
    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _webrtc(find_spec: Callable[[str], Any], webrtc_type: Callable[[], Any]) -> Feature:
    for module in WEBRTC_MODULES:
        if not module_found(find_spec, module):
            return Feature(
                WEBRTC,
                False,
                f"No module named '{module}' (needs pipecat-ai with the webrtc extra)",
            )
    cls = webrtc_type()
    if cls is None:
        return Feature(
            WEBRTC, False, "pipecatcloud.agent has no SmallWebRTCSessionArguments (pipecatcloud)"
        )
    # A type that exists but cannot be built would fail every session: not served.
    reason = unbuildable("SmallWebRTCSessionArguments", cls)
    return Feature(WEBRTC, reason is None, reason)


def _whatsapp(find_spec: Callable[[str], Any], webrtc: Feature, settings: Any) -> Feature:
    if not webrtc.available:
        return Feature(WHATSAPP, False, "Requires SmallWebRTC (transport.webrtc) to be enabled")
    if not module_found(find_spec, WHATSAPP_MODULE):
        return Feature(WHATSAPP, False, f"No module named '{WHATSAPP_MODULE}'")
    missing = [env for env, field in WHATSAPP_SETTINGS.items() if not getattr(settings, field)]
    if missing:
        return Feature(WHATSAPP, False, f"Missing environment variables: {', '.join(missing)}")
    return Feature(WHATSAPP, True)


def detect(
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
    *,
    settings: Any = None,
    webrtc_type: Callable[[], Any] | None = None,
    moq_reason: Callable[[Callable[[str], Any]], str | None] | None = None,
) -> list[Feature]:
    """The image's features, in a stable order. Modules are looked up, not imported (only
    pipecatcloud's session types, which the CLI has loaded already, are inspected).

    Args:
        find_spec: How modules are looked up (tests pass a fake).
        settings: The server's `config.Settings` (WhatsApp needs its three variables); the
            process environment's when omitted.
        webrtc_type: Returns pipecatcloud's SmallWebRTC session type or None
            (`session_args.webrtc_session_type` when omitted).
        moq_reason: Says, given ``find_spec``, why MoQ sessions cannot be served, or None
            (`moq_unavailable_reason` when omitted).
    """
    if settings is None:
        settings = load_settings()
    if webrtc_type is None:
        webrtc_type = webrtc_session_type
    if moq_reason is None:
        moq_reason = moq_unavailable_reason
    webrtc = _webrtc(find_spec, webrtc_type)
    try:
        moq_unavailable = moq_reason(find_spec)
    except Exception:  # the check's own fault: not served, as the existing image reports it
        moq_unavailable = MOQ_CHECK_DID_NOT_RUN
    return [
        _observers(find_spec),
        # Daily sessions reach the bot as a room URL and token; joining needs daily-python.
        _module_feature("transport.daily", "daily", find_spec),
        Feature("transport.websocket", True),
        webrtc,
        _whatsapp(find_spec, webrtc, settings),
        Feature(MOQ, moq_unavailable is None, moq_unavailable),
    ]


def enabled(features: list[Feature], name: str) -> bool:
    """Whether ``name`` is among ``features`` and available."""
    return any(f.name == name and f.available for f in features)


def unavailable(features: list[Feature], name: str) -> str | None:
    """Why ``name`` is not served (its reason, or that it was not detected), or None if it is."""
    for feature in features:
        if feature.name == name:
            return None if feature.available else (feature.reason or f"{name} is unavailable")
    return f"{name} was not detected"


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


def moq_unavailable_reason(
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
) -> str | None:
    """Why this image cannot serve MoQ sessions, or None when it can."""
    try:
        import pipecat.runner.types as runner_types
    except ImportError:
        return "pipecat-ai is not installed"
    if not hasattr(runner_types, "MOQRunnerArguments"):
        return (
            f"{installed_name('pipecat-ai')} has no MOQRunnerArguments "
            "(MoQ sessions need pipecat-ai 1.12.0 or newer)"
        )
    cls = moq_session_type()
    if cls is None:
        return (
            f"{installed_name('pipecatcloud')} has no MOQSessionArguments "
            "(MoQ sessions need pipecatcloud 1.3.0 or newer)"
        )
    if not module_found(find_spec, "moq"):
        return "No module named 'moq' (needs pipecat-ai's moq extra)"
    return unbuildable("MOQSessionArguments", cls)
