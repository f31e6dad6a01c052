"""Echoes Twilio media frames straight back, no pipecat: the transport and bridge cost alone."""

import json


async def bot(args):
    ws = args.websocket
    stream_sid = None
    async for text in ws.iter_text():
        message = json.loads(text)
        event = message.get("event")
        if event == "start":
            stream_sid = message["start"]["streamSid"]
        elif event == "media":
            reply = {"event": "media", "streamSid": stream_sid,
                     "media": {"payload": message["media"]["payload"]}}  # fmt: skip
            await ws.send_text(json.dumps(reply))
        elif event == "stop":
            return
