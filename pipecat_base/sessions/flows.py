"""Per-session Pipecat Flows configuration: the ``/bot`` start envelope and the ``/ws`` flow file.

``/bot`` with ``X-Pcc-Start-Envelope: 1`` carries ``{"body": ..., "flow_config": "<text>"}``;
the bot gets the inner body and ``args.flow_config``. Without the marker the body is passed on
untouched, even when it looks like an envelope (a body may legitimately have those keys).

A WebSocket handshake cannot carry a flow (headers are too small), so the platform's sidecar
writes it to a file in ``PCC_SESSION_FILES_DIR`` and names it in ``X-Pcc-Flow-Config-File``.
The file is read before accepting; anything wrong refuses the call rather than silently running
the flow baked into the image. Error texts never include the file's contents.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from pipecat_base.sessions.inputs import BadInput

ENVELOPE_HEADER = "X-Pcc-Start-Envelope"
FLOW_FILE_HEADER = "X-Pcc-Flow-Config-File"


class FlowFileError(Exception):
    """The named flow file cannot be used; `str()` says why, without its contents."""


def split_envelope(marker: str | None, body: dict[str, Any]) -> tuple[Any, str | None]:
    """The session body and flow config of a ``/bot`` request.

    Raises:
        BadInput: with the existing image's exact 400 details.
    """
    if marker is None:
        return body, None
    if marker != "1":
        raise BadInput(f"unsupported start envelope version '{marker}'")
    if "body" not in body or "flow_config" not in body:
        raise BadInput("start envelope needs both 'body' and 'flow_config'")
    flow = body["flow_config"]
    if not isinstance(flow, str) or not flow.strip():
        raise BadInput("start envelope 'flow_config' must be non-empty text")
    return body["body"], flow


def read_flow_file(directory: str | None, name: str) -> str:
    """Read the flow named by ``X-Pcc-Flow-Config-File`` from ``PCC_SESSION_FILES_DIR``.

    Symlinks are not followed, and the file is opened non-blocking so a FIFO cannot hang the
    server; the directory is never listed.

    Raises:
        FlowFileError: naming what is wrong (never the contents, never a chained exception).
    """
    if not directory:
        raise FlowFileError("PCC_SESSION_FILES_DIR is not set")
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise FlowFileError(f"{name!r} is not a bare filename")
    path = Path(directory) / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
        raise FlowFileError(f"cannot read {path}: {reason}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FlowFileError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read()
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FlowFileError(f"{path} is not UTF-8 text") from None
    if not text.strip():
        raise FlowFileError(f"{path} is empty")
    return text
