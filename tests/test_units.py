"""Durations, sizes and signals as people write them."""

from __future__ import annotations

import signal

import pytest

from orchestrator.units import format_duration, format_size, parse_duration, parse_signal, parse_size


@pytest.mark.parametrize("text,seconds", [
    ("250ms", 0.25), ("10s", 10.0), ("5m", 300.0), ("6h", 21600.0), ("1d", 86400.0),
    ("1.5h", 5400.0), (" 10 s ", 10.0), ("0", 0.0), ("42", 42.0), ("0.5", 0.5),
    (3, 3.0), (2.5, 2.5), (0, 0.0),
])
def test_parse_duration(text, seconds):
    result = parse_duration(text)
    assert result == pytest.approx(seconds)
    assert isinstance(result, float)


@pytest.mark.parametrize("bad", [
    "10 parsecs", "-5s", "s", "", "10x", "1h30m", "ten seconds", -1, -0.5, True, False, None, [1], {},
    float("nan"),
])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_duration_error_messages_name_the_value():
    with pytest.raises(ValueError, match="10 parsecs"):
        parse_duration("10 parsecs")
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-3)


@pytest.mark.parametrize("text,size", [
    ("200MiB", 200 * 2**20), ("1GB", 10**9), ("512KiB", 512 * 2**10), ("1.5KiB", 1536),
    ("2TiB", 2 * 2**40), ("3TB", 3 * 10**12), ("7B", 7), ("10", 10), ("1 kb", 1000),
    ("1mib", 2**20), (" 4 GiB ", 4 * 2**30), (0, 0), (4096, 4096),
])
def test_parse_size(text, size):
    result = parse_size(text)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize("bad", ["lots", "-5MiB", "1 parsec", "", "MiB", "1PiB", -1, 1.5, True, None, [1]])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


@pytest.mark.parametrize("value,sig", [
    ("TERM", signal.SIGTERM), ("SIGTERM", signal.SIGTERM), ("term", signal.SIGTERM),
    (" int ", signal.SIGINT), ("HUP", signal.SIGHUP), ("USR1", signal.SIGUSR1), ("sigquit", signal.SIGQUIT),
    (9, signal.SIGKILL), (15, signal.SIGTERM),
])
def test_parse_signal(value, sig):
    assert parse_signal(value) is sig


@pytest.mark.parametrize("bad", ["FOO", "SIGFOO", "", "SIG", 0, 999, -15, True, 15.0, None])
def test_parse_signal_rejects(bad):
    with pytest.raises(ValueError, match="signal"):
        parse_signal(bad)


@pytest.mark.parametrize("seconds,text", [
    (0.0, "0ms"), (0.85, "850ms"), (1, "1s"), (12, "12s"), (184, "3m04s"), (3599, "59m59s"),
    (7500, "2h05m"), (90000, "25h00m"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("size,text", [
    (0, "0B"), (1023, "1023B"), (1024, "1.0K"), (int(12.3 * 2**20), "12.3M"), (3 * 2**30, "3.0G"),
    (2 * 2**40, "2.0T"),
])
def test_format_size(size, text):
    assert format_size(size) == text

