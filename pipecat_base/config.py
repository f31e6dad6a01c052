"""Every environment variable the server reads, parsed once into a validated `Settings`.

Nothing else in the package reads ``os.environ`` for its own settings. A bad value fails startup
with one line naming the variable and the value (`ConfigError`), which the CLI turns into exit
code 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The speedups (`pipecat_base._speedups`) and the variable that selects them (`parse_speedups`).
SPEEDUPS_VAR = "PIPECAT_BASE_SPEEDUPS"
SPEEDUP_NAMES = (
    "tcp_server",
    "app_inbox",
    "checkpoints",
    "ws_frames",
    "frame_writer",
    "http_connection",
    "route_matching",
    "loop_scheduler",
)
_ON = frozenset({"", "1", "on", "all", "true"})
_OFF = frozenset({"0", "off", "none", "false"})

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """A setting has a value the server cannot run with; `str()` is one line for stderr."""


class Settings(BaseSettings):
    """Server settings, from the environment (names are case-sensitive, as in the container).

    Empty values count as unset, so ``MAX_SESSIONS=`` means "no limit", not an error.
    """

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore")

    bot: str = Field("bot", validation_alias="PIPECAT_BOT")
    host: str = Field("0.0.0.0", validation_alias="HOST")
    # 0 asks the OS for a free port (tests and local runs); the container uses 8080.
    port: int = Field(8080, ge=0, le=65535, validation_alias="PORT")
    shutdown_timeout: float = Field(7200.0, ge=0, validation_alias="SHUTDOWN_TIMEOUT")
    session_cancel_grace: float = Field(5.0, ge=0, validation_alias="SESSION_CANCEL_GRACE")
    client_disconnect_grace: float = Field(10.0, ge=0, validation_alias="CLIENT_DISCONNECT_GRACE")
    loop_stall_warning: float = Field(0.5, gt=0, validation_alias="LOOP_STALL_WARNING")
    max_sessions: int | None = Field(None, ge=1, validation_alias="MAX_SESSIONS")
    log_level: str = Field("DEBUG", validation_alias="PIPECAT_LOG_LEVEL")
    image_version: str = Field("unknown", validation_alias="IMAGE_VERSION")
    # Parsed leniently by memory.parse_switch (a bad value logs an ERROR and stays on, as in the
    # existing image), so it is kept as text here.
    release_session_memory: str | None = Field(None, validation_alias="PCC_RELEASE_SESSION_MEMORY")
    termination_log_path: str = Field(
        "/dev/termination-log", validation_alias="PCC_TERMINATION_LOG_PATH"
    )
    log_features_summary: bool = Field(False, validation_alias="PCC_LOG_FEATURES_SUMMARY")
    log_dir: str | None = Field(None, validation_alias="PCC_LOG_DIR")
    session_files_dir: str | None = Field(None, validation_alias="PCC_SESSION_FILES_DIR")
    token_refresher_dir: str = Field(
        "/var/run/token-refresher", validation_alias="PCC_TOKEN_REFRESHER_DIR"
    )
    # SmallWebRTC (`webrtc`).
    ice_config_url: str = Field(
        "http://localhost:9090/ice-servers", validation_alias="ICE_CONFIG_URL"
    )
    webrtc_connection_timeout: float = Field(
        120.0, gt=0, validation_alias="WEBRTC_CONNECTION_TIMEOUT"
    )
    esp32_enabled: bool = Field(False, validation_alias="ESP32_ENABLED")
    esp32_host: str | None = Field(None, validation_alias="ESP32_HOST")
    # WhatsApp (`whatsapp`). Secrets stay SecretStr so no repr or log line can show them.
    whatsapp_token: SecretStr | None = Field(None, validation_alias="WHATSAPP_TOKEN")
    whatsapp_phone_number_id: str | None = Field(None, validation_alias="WHATSAPP_PHONE_NUMBER_ID")
    whatsapp_app_secret: SecretStr | None = Field(None, validation_alias="WHATSAPP_APP_SECRET")
    whatsapp_graph_api_url: str | None = Field(None, validation_alias="WHATSAPP_GRAPH_API_URL")
    # Event publishing (`events`).
    event_publisher_endpoint: str | None = Field(
        None, validation_alias="PIPECAT_EVENT_PUBLISHER_ENDPOINT"
    )
    exclude_content: bool = Field(False, validation_alias="PCC_EXCLUDE_CONTENT")
    # The fast paths into libraries' internals (`pipecat_base._speedups`): all, none, some.
    # Kept as written; `speedups.install` engages what it selects.
    speedups: str = Field("1", validation_alias=SPEEDUPS_VAR)

    @field_validator(
        "shutdown_timeout",
        "session_cancel_grace",
        "client_disconnect_grace",
        "loop_stall_warning",
        "webrtc_connection_timeout",
    )
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("event_publisher_endpoint")
    @classmethod
    def _full_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        split = urlsplit(value.strip())
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError("must be a full http:// or https:// URL, route included")
        return value.strip()

    @field_validator("log_features_summary", mode="before")
    @classmethod
    def _only_true(cls, value: object) -> bool:
        # As the existing image reads it: "true" in any case turns it on, anything else off.
        return str(value).strip().lower() == "true"

    @field_validator("speedups", mode="before")
    @classmethod
    def _speedup_names(cls, value: object) -> str:
        parse_speedups(str(value))  # a name that is no speedup fails startup here
        return str(value)

    @field_validator("exclude_content", mode="before")
    @classmethod
    def _any_but_false(cls, value: object) -> bool:
        # Any value but empty or "false" excludes content, so a typo errs on the side of privacy.
        return str(value).strip().lower() not in ("", "false")


def parse_speedups(raw: str | None) -> frozenset[str]:
    """The speedups ``PIPECAT_BASE_SPEEDUPS=raw`` selects.

    Unset, ``1``, ``on`` or ``all``: every one; ``0``, ``off`` or ``none``: none;
    ``-ws_frames,-frame_writer``: all but those; ``tcp_server,app_inbox``: only those.

    Raises:
        ValueError: a name that is not a speedup, or ``-name`` mixed with plain names.
    """
    text = (raw or "").strip().lower()
    if text in _ON:
        return frozenset(SPEEDUP_NAMES)
    if text in _OFF:
        return frozenset()
    items = [item.strip() for item in text.split(",") if item.strip()]
    removing = [item.startswith("-") for item in items]
    if any(removing) and not all(removing):
        raise ValueError(
            "either name the speedups to run or, each with a leading '-', the ones to leave off; "
            "not both"
        )
    names = [item.lstrip("-") for item in items]
    unknown = [name for name in names if name not in SPEEDUP_NAMES]
    if unknown:
        raise ValueError(
            f"no speedup named {', '.join(unknown)} (the speedups: {', '.join(SPEEDUP_NAMES)})"
        )
    chosen = frozenset(names)
    return frozenset(SPEEDUP_NAMES) - chosen if all(removing) else chosen


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Parse the settings from ``environ`` (default: the process environment).

    Args:
        environ: Variables to read instead of ``os.environ`` (tests pass a dict).
        **overrides: Values that win over the environment, by field name (the CLI's BOT argument).

    Raises:
        ConfigError: naming the first offending variable and its raw value.
    """
    try:
        if environ is None:
            settings = Settings()
        else:
            present = {k: v for k, v in environ.items() if v != ""}
            settings = Settings.model_validate(present)
        return settings.model_copy(update=overrides) if overrides else settings
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "?"
        raise ConfigError(
            f"Invalid environment variable {name}={error['input']!r}: {error['msg']}"
        ) from None
