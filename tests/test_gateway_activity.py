"""The dashboard's activity: its JSON shape, its bounds, and its figures (a fake clock; no
server)."""

from __future__ import annotations

import pytest

from postkey._result import ErrorKind, Result, State
from postkey.gateway._activity import HOSTS, RECENT, SERIES_S, SLOWEST, Activity
from postkey.gateway._histogram import Histogram, bucket_of, value_of


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.25

    def __call__(self) -> float:
        return self.now


def done(key: str, status: int, ms: float) -> Result:
    return Result(key, State.DONE, status=status, submitted_at=0.0, finished_at=ms / 1000)


def failed(key: str, kind: ErrorKind) -> Result:
    return Result(key, State.FAILED, error_kind=kind, error="x", submitted_at=0.0, finished_at=0.5)


def test_counters_by_status_class_error_kind_and_cancelled() -> None:
    activity = Activity(Clock())
    for i, status in enumerate([200, 204, 301, 404, 503, 101]):
        activity.submitted("t", f"k{i}", "GET", "http://h/")
        activity.finished("t", f"k{i}", "http://h/", done(f"k{i}", status, 5))
    activity.submitted("t", "f1", "GET", "http://h/")
    activity.finished("t", "f1", "http://h/", failed("f1", ErrorKind.TIMEOUT))
    activity.finished("t", "f2", "http://h/", failed("f2", ErrorKind.CANCELLED))
    activity.submitted("t", "p", "GET", "http://h/")
    counters = activity.snapshot("t")["counters"]
    assert counters == {
        "submitted": 8,
        "in_flight": 0,  # 8 submitted, 8 finished (the cancelled one finished before its submit)
        "done": {"1xx": 1, "2xx": 2, "3xx": 1, "4xx": 1, "5xx": 1},
        "failed": {"timeout": 1},
        "cancelled": 1,
    }
    assert activity.snapshot("other")["counters"]["submitted"] == 0  # tenants are apart


def test_the_series_is_120_seconds_oldest_first_with_quantiles() -> None:
    clock = Clock()
    activity = Activity(clock)
    for second in range(200):
        clock.now = 1_000_000.5 + second
        activity.submitted("t", f"k{second}", "GET", "http://h/")
        activity.finished("t", f"k{second}", "http://h/", done(f"k{second}", 200, 10 + second))
    series = activity.snapshot("t")["series"]
    assert len(series) == SERIES_S
    assert [p["t"] for p in series] == list(range(1_000_000 + 200 - SERIES_S, 1_000_000 + 200))
    last = series[-1]
    assert last["submitted"] == last["completed"] == 1
    assert last["p50_ms"] == pytest.approx(10 + 199, rel=0.06)
    clock.now += 5
    quiet = activity.snapshot("t")["series"]
    assert quiet[-1] == {
        "t": int(clock.now),
        "submitted": 0,
        "completed": 0,
        "p50_ms": None,
        "p99_ms": None,
    }


def test_hosts_recent_and_memory_are_bounded() -> None:
    activity = Activity(Clock())
    for i in range(HOSTS + 50):
        url = f"https://h{i}.example:8443/p?token=secret"
        activity.submitted("t", f"k{i}", "POST", url)
        activity.finished("t", f"k{i}", url, done(f"k{i}", 200, 1 + i))
    snapshot = activity.snapshot("t")
    assert len(snapshot["slowest_hosts"]) == SLOWEST
    p99s = [h["p99_ms"] for h in snapshot["slowest_hosts"]]
    assert p99s == sorted(p99s, reverse=True)
    slowest = snapshot["slowest_hosts"][0]
    assert slowest["host"].endswith(".example:8443") and slowest["count"] == 1
    assert slowest["p99_ms"] == pytest.approx(HOSTS + 50, rel=0.06)  # the slowest host's 1 + i ms
    tenant = activity._tenants["t"]
    assert len(tenant.hosts) == HOSTS and len(tenant.recent) == RECENT
    recent = snapshot["recent"]
    assert len(recent) == RECENT and recent[0]["key"] == f"k{HOSTS + 49}"
    assert all("secret" not in r["url"] for r in recent)
    assert len(tenant.seconds) <= SERIES_S + 2


def test_histogram_quantiles_are_within_a_bucket() -> None:
    histogram = Histogram()
    for ms in range(1, 1001):
        histogram.add(float(ms))
    p50, p99 = histogram.quantiles(0.5, 0.99)
    assert p50 == pytest.approx(500, rel=0.05) and p99 == pytest.approx(990, rel=0.05)
    assert Histogram().quantiles(0.5) == [None]
    assert bucket_of(float("nan")) == 0 and value_of(0) == 0.01
    assert value_of(bucket_of(123.0)) == pytest.approx(123.0, rel=0.05)


def test_a_result_recorded_before_its_submit_still_shows_in_recent() -> None:
    activity = Activity(Clock())
    activity.finished("t", "fast", "http://h/", failed("fast", ErrorKind.BLOCKED))
    activity.submitted("t", "fast", "GET", "http://h/")
    (entry,) = activity.snapshot("t")["recent"]
    assert entry["state"] == "failed" and entry["error_kind"] == "blocked"
    assert activity.snapshot("t")["counters"]["in_flight"] == 0


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://[::ffff:127.0.0.1]:18788/x", "[::ffff:127.0.0.1]:18788"),
        ("http://[::1]:8080/", "[::1]:8080"),
        ("https://[2001:DB8::1]/", "[2001:db8::1]"),  # the scheme's port: none shown
        ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
        ("https://example.com:443/", "example.com"),
    ],
)
def test_hosts_are_shown_as_in_a_url_with_ipv6_addresses_bracketed(url: str, host: str) -> None:
    activity = Activity(Clock())
    activity.submitted("t", "k", "GET", url)
    activity.finished("t", "k", url, done("k", 200, 5))
    assert [h["host"] for h in activity.snapshot("t")["slowest_hosts"]] == [host]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://h/app;jsessionid=SECRET", "http://h/app;…"),
        ("http://h/a;token=SECRET/b;v=SECRET/c?q=SECRET", "http://h/a;…/b;…/c?…"),
        ("http://u:SECRET@h:81/p;", "http://h:81/p;…"),
        ("http://h/a%3Bkept/b", "http://h/a%3Bkept/b"),  # an encoded ';' is data, not a parameter
    ],
)
def test_recent_urls_hide_path_parameters_as_they_hide_queries(url: str, shown: str) -> None:
    activity = Activity(Clock())
    activity.submitted("t", "k", "GET", url)
    assert activity.snapshot("t")["recent"][0]["url"] == shown
