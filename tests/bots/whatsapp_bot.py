"""Notes the WhatsApp call it was started for, then ends (the webhook tests need no media)."""

from loguru import logger


async def bot(args):
    call = args.body
    logger.info(
        f"whatsapp bot: {type(args).__name__} for call {call.id} from {call.from_}, "
        f"connection {type(args.webrtc_connection).__name__}"
    )
