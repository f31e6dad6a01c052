"""Benchmarks: pipecat-base against an asyncio baseline, same bots, same run.

Run ``python -m bench`` (see ``bench/__main__.py``).
"""
