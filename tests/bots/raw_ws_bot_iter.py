"""Echo with ``iter_bytes()``/``send_bytes()``, the way a plain Starlette handler is written."""


async def bot(args):
    async for data in args.websocket.iter_bytes():
        await args.websocket.send_bytes(data)
