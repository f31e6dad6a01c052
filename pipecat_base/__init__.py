"""pipecat-base."""
