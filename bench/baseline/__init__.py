"""The baseline: FastAPI on uvicorn, serving /bot and /ws the way the existing image does."""
