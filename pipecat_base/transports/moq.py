"""MoQ (Media over QUIC) sessions: ``POST /bot`` with ``X-Daily-Transport-Type: moq``.

The platform names a relay (``X-Moq-Relay-Url``, whose query carries the session's token, e.g.
``?jwt=...``) and a namespace (``X-Moq-Namespace``); the bot gets pipecatcloud's
``MOQSessionArguments`` and dials the relay itself (pipecat's ``create_transport``, key
``"moq"``). The server never says the relay URL: `RelaySecret` replaces it, and every part of
it that could carry the token, with ``<relay URL>`` in refusals and, for the whole session, in
every log record, print and traceback (`redaction.Secrets`).

Whether the image can serve MoQ is decided by what works, not by version numbers: pipecat-ai's
``MOQRunnerArguments`` (1.12+), pipecatcloud's ``MOQSessionArguments`` (1.3.0+), and pipecat-ai's
``moq`` extra (the ``moq`` module). `features.moq_unavailable_reason` says which is missing;
the capability ``transport.moq`` reports it, and every MoQ start is refused with it.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

from pipecat_base.sessions.args import moq_session_type
from pipecat_base.startup.features import module_found

TRANSPORT = "moq"
RELAY_URL_HEADER = "X-Moq-Relay-Url"
NAMESPACE_HEADER = "X-Moq-Namespace"
PLACEHOLDER = "<relay URL>"
WITHHELD = "<withheld: it could not be checked for the relay URL>"
# Query values this long are treated as secrets wherever they appear; shorter ones ("1", "us")
# would blank out ordinary words.
MIN_SECRET_LENGTH = 8
PARTICIPANT_ID = "response"
PEER_ID = "request"
NO_SUPPORT = "this image reports no MoQ support"


class MoqRefused(Exception):
    """A MoQ start the server will not run; ``str()`` is the 400's detail, already scrubbed."""

    def __init__(self, session_id: str | None, reason: str) -> None:
        super().__init__(f"Refusing MoQ session {session_id}: {reason}")


class RelaySecret:
    """The relay URL and the parts of it that can carry its token, kept out of text.

    The whole URL, its query, its fragment and every query value of at least
    `MIN_SECRET_LENGTH` characters, each also percent-decoded, longest first. A URL that does
    not parse is replaced whole.
    """

    def __init__(self, relay_url: str) -> None:
        parts = {relay_url}
        try:
            split = urlsplit(relay_url)
        except ValueError:
            pieces = []
        else:
            pieces = [split.query, split.fragment]
            for section in pieces[:]:
                # The values as written (percent-encoded); decoded forms are added below.
                pieces += [pair.partition("=")[2] for pair in re.split("[&;]", section)]
        for piece in pieces:
            parts.update((piece, unquote(piece), unquote_plus(piece)))
        self._parts = sorted(
            (p for p in parts if len(p) >= MIN_SECRET_LENGTH or p == relay_url),
            key=len,
            reverse=True,
        )

    def scrub(self, text: object) -> str:
        """``text`` with every secret part replaced; `WITHHELD` if it cannot be read."""
        try:
            result = text if isinstance(text, str) else str(text)
        except Exception:
            return WITHHELD
        for part in self._parts:
            if part:
                result = result.replace(part, PLACEHOLDER)
        return result

    def __repr__(self) -> str:
        return f"RelaySecret({PLACEHOLDER})"


def startup_warning(
    reason: str | None, find_spec: Callable[[str], Any] = importlib.util.find_spec
) -> str | None:
    """The warning for an image that has the ``moq`` extra yet cannot serve MoQ, or None."""
    if reason is None or not module_found(find_spec, "moq"):
        return None
    return (
        f"pipecat-ai's moq extra is installed, but {reason}: "
        "the image reports MoQ sessions unavailable."
    )


def session_args(
    session_id: str | None,
    body: Any,
    headers: Mapping[str, str],
    *,
    unavailable: str | None,
    build: Callable[..., Any],
) -> tuple[Any, RelaySecret]:
    """The bot's ``MOQSessionArguments`` and the relay URL's secret, or `MoqRefused`.

    Args:
        session_id: The session's id, for the refusal text.
        body: The session body (``args.body``).
        headers: The request's headers.
        unavailable: Why the image cannot serve MoQ (`features.moq_unavailable_reason`), or
            None. Checked first: an image without MoQ refuses whatever the headers say.
        build: Builds an argument object from its type and fields (`session_args.build`).
    """
    if unavailable is not None:
        raise MoqRefused(session_id, unavailable or NO_SUPPORT)
    relay_url = headers.get(RELAY_URL_HEADER) or ""
    namespace = headers.get(NAMESPACE_HEADER)
    if not relay_url.strip() or namespace is None:
        raise MoqRefused(
            session_id,
            f"its start carries no relay URL or namespace ({RELAY_URL_HEADER}, {NAMESPACE_HEADER})",
        )
    secret = RelaySecret(relay_url)
    cls = moq_session_type()
    assert cls is not None  # moq_unavailable_reason said so
    failure = None
    try:
        args = build(
            cls, body=body, session_id=session_id, relay_url=relay_url, namespace=namespace,
            participant_id=PARTICIPANT_ID, peer_id=PEER_ID,
        )  # fmt: skip
    except Exception as exc:
        failure = f"{type(exc).__name__}: {secret.scrub(exc)}"
    if failure is not None:
        # Raised outside the except block: no chained exception carries the unscrubbed text.
        raise MoqRefused(session_id, f"its session arguments did not build ({failure})")
    return args, secret
