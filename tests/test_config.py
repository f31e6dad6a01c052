"""Settings: defaults, parsing, and one-line errors naming the variable and the value."""

from __future__ import annotations

import pytest

from pipecat_base.config import ConfigError, load_settings


def test_defaults_match_the_existing_image():
    s = load_settings({})
    assert (s.bot, s.host, s.port) == ("bot", "0.0.0.0", 8080)
    assert s.shutdown_timeout == 7200.0
    assert s.session_cancel_grace == 5.0
    assert s.max_sessions is None
    assert s.log_level == "DEBUG"
    assert s.image_version == "unknown"


def test_values_are_parsed():
    s = load_settings(
        {
            "PORT": "9000",
            "SHUTDOWN_TIMEOUT": "1.5",
            "SESSION_CANCEL_GRACE": "0",
            "MAX_SESSIONS": "3",
            "PIPECAT_LOG_LEVEL": "info",
            "IMAGE_VERSION": "1.0.0",
            "PIPECAT_BOT": "agent.main",
        }
    )
    assert (s.port, s.shutdown_timeout, s.session_cancel_grace) == (9000, 1.5, 0.0)
    assert (s.max_sessions, s.log_level, s.image_version, s.bot) == (
        3,
        "INFO",
        "1.0.0",
        "agent.main",
    )


def test_empty_values_count_as_unset():
    assert load_settings({"MAX_SESSIONS": "", "PORT": ""}).port == 8080


def test_cli_bot_argument_wins_over_environment():
    assert load_settings({"PIPECAT_BOT": "a"}, bot="b.py").bot == "b.py"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SHUTDOWN_TIMEOUT": "abc"}, "SHUTDOWN_TIMEOUT='abc'"),
        ({"SHUTDOWN_TIMEOUT": "-5"}, "SHUTDOWN_TIMEOUT='-5'"),
        ({"SHUTDOWN_TIMEOUT": "inf"}, "SHUTDOWN_TIMEOUT='inf'"),
        ({"PORT": "-1"}, "PORT='-1'"),
        ({"PORT": "70000"}, "PORT='70000'"),
        ({"PORT": "http"}, "PORT='http'"),
        ({"SESSION_CANCEL_GRACE": "nan"}, "SESSION_CANCEL_GRACE='nan'"),
        ({"MAX_SESSIONS": "0"}, "MAX_SESSIONS='0'"),
        ({"MAX_SESSIONS": "two"}, "MAX_SESSIONS='two'"),
        ({"PIPECAT_LOG_LEVEL": "loud"}, "PIPECAT_LOG_LEVEL='loud'"),
    ],
)
def test_bad_values_name_the_variable_and_value(env, fragment):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_process_environment_is_read(monkeypatch):
    monkeypatch.setenv("PORT", "1234")
    assert load_settings().port == 1234


@pytest.mark.parametrize(
    ("level", "access_log"), [("DEBUG", True), ("INFO", True), ("WARNING", False), ("ERROR", False)]
)
def test_hypercorn_builds_access_lines_only_when_the_log_level_shows_them(level, access_log):
    from pipecat_base.server import hypercorn_config

    config = hypercorn_config(load_settings({"PIPECAT_LOG_LEVEL": level}))
    assert (config.accesslog is not None) is access_log


@pytest.mark.parametrize(
    ("raw", "on"), [("true", True), ("TRUE", True), ("yes", False), ("", False)]
)
def test_the_features_summary_switch_is_a_setting(raw, on):
    assert load_settings({"PCC_LOG_FEATURES_SUMMARY": raw}).log_features_summary is on
