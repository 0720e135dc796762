"""``bench/bench_server_soak.py`` for 30 s on a tiny model: every kind of traffic, a clean verdict, and a
verdict that fails for each reason it names.

Why in the suite: the 10-minute and hour-long soaks run by hand (docs/serving.md); this short one keeps
the bench working and the server passing it on every change. Loopback only, bounded by --duration.
"""

from __future__ import annotations

import json

from bench_scripts import load_bench


def _bench():
    return load_bench("bench_server_soak.py")


def test_a_30_second_soak_on_a_tiny_model_passes_with_every_kind_of_traffic(tmp_path) -> None:
    out = tmp_path / "soak.json"
    args = ["--duration", "30", "--clients", "3", "--window", "10", "--burst-every", "10", "--out", str(out)]
    status = _bench().main(args)
    result = json.loads(out.read_text())
    assert status == 0 and result["verdict"] == "pass" and result["failures"] == [], result["failures"]
    totals = result["totals"]
    assert totals.get("200", 0) >= 20 and totals.get("429", 0) >= 1, totals  # answers, and bursts refused
    assert totals.get("400", 0) >= 1 and totals.get("hung_up", 0) >= 1, totals  # bad requests, hang-ups
    assert not set(totals) - {"200", "400", "404", "413", "429", "hung_up"}, totals
    windows = result["windows"]
    assert len(windows) == 3
    for window in windows:
        assert window["requests"] and window["latency_s"]["p50"] is not None, window
        assert window["rss_mib"] > 0 and window["fds"] > 0 and window["threads"] > 0, window
    assert result["ttft_s"]["p99"] is not None and result["latency_s"]["p99"] >= result["latency_s"]["p50"]
    assert result["rss"]["drift_mib"] is not None and result["rss"]["drift_mib"] <= 100
    assert result["health_at_end"]["running"] == 0 and result["health_at_end"]["queued"] == 0
    assert result["health_at_end"]["abandoned"] >= 1  # clients that hung up were counted, not failed


def test_the_verdict_fails_on_each_reason() -> None:
    bench = _bench()
    record = bench.Record
    ok = [record("chat", 1.0, "200", 0.1), record("bad", 1.0, "400", 0.1, expected=("400", "429"))]
    idle = {"running": 0, "queued": 0}
    drift = {"drift_mib": 12.0}
    assert bench.failures(ok, drift, 100.0, idle, []) == []
    cases = [
        ([record("chat", 2.0, "500")], drift, idle, [], "1 x 500"),
        ([record("burst", 2.0, "reset")], drift, idle, [], "1 x reset"),
        ([record("chat", 2.0, "client_timeout")], drift, idle, [], "1 x client_timeout"),
        ([record("bad", 2.0, "200", expected=("400", "429"))], drift, idle, [], "bad answered 200"),
        ([], {"drift_mib": 150.0}, idle, [], "RSS drift 150.0 MiB > 100.0 MiB"),
        ([], drift, {"running": 1, "queued": 0}, [], "a model slot did not come back"),
        ([], drift, idle, ["Traceback (most recent call last):"], "error lines in the server log"),
    ]
    for extra, rss, health, log, reason in cases:
        reasons = bench.failures(ok + extra, rss, 100.0, health, log)
        assert len(reasons) == 1 and reason in reasons[0], (reason, reasons)
