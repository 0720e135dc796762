"""Thread choice for heavy commands: affinity and cgroup quota, --threads, passive waiting."""

from __future__ import annotations

import os

import pytest

from thinchat import threads


@pytest.mark.parametrize(
    ("text", "limit"), [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5), ("", None)]
)
def test_cgroup_quota_is_read_as_cpus(tmp_path, text, limit):
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert threads.cgroup_cpu_limit(path) == limit
    assert threads.cgroup_cpu_limit(tmp_path / "missing") is None


def test_available_cpus_is_the_affinity_capped_by_the_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("50000 100000")  # half a CPU: still one thread
    assert threads.available_cpus(quota) == 1
    quota.write_text(f"{(affinity + 8) * 100000} 100000")  # a quota above the affinity changes nothing
    assert threads.available_cpus(quota) == affinity


def test_configure_threads_prefers_the_flag_then_the_environment(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice is kept
    try:
        assert threads.configure_threads(None) == 1
        assert threads.configure_threads(2) == 2 and os.environ["OMP_NUM_THREADS"] == "2"
        assert torch.get_num_threads() == 2
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    finally:
        torch.set_num_threads(before)


def test_every_heavy_command_takes_threads():
    from thinchat.cli import HEAVY_COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in HEAVY_COMMANDS:
        assert any("--threads" in a.option_strings for a in sub[name]._actions), name


@pytest.mark.parametrize("passive", [False, True])
def test_only_threaded_generation_waits_passively(passive):
    import subprocess
    import sys

    code = (
        "import os; from thinchat.threads import configure_threads; "
        f"configure_threads(1, passive={passive}); print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("PASSIVE" if passive else "None")


def test_the_commands_that_wait_passively_are_those_that_generate_on_worker_threads():
    from thinchat.cli import HEAVY_COMMANDS, THREADED_COMMANDS

    assert {"chat", "serve", "web"} == THREADED_COMMANDS and THREADED_COMMANDS < HEAVY_COMMANDS
    assert {"eval", "caption", "train", "finetune", "quickstart"} <= HEAVY_COMMANDS - THREADED_COMMANDS
