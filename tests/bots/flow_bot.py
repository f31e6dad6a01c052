"""Reports what a session got: its body and flow_config (HTTP: logged; WebSocket: sent back)."""

import json

from loguru import logger


async def bot(args):
    report = {"body": args.body, "flow_config": args.flow_config}
    logger.info("flow bot: " + json.dumps(report))
    websocket = getattr(args, "websocket", None)
    if websocket is not None:
        await websocket.send_text(json.dumps(report))
