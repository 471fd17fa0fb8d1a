"""OtherWork: the cores other processes keep busy, from /proc/stat and this process's own CPU time."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from serving.other_work import OtherWork, read_proc

STAT = """cpu  900 0 900 900 0 0 0 0 0 0
cpu0 100 10 50 1000 7 3 2 40 0 0
cpu1 200 0 100 1000 9 0 0 0 0 0
cpu2 999 0 999 1000 0 0 0 0 0 0
intr 1 2 3
"""


def test_busy_time_counts_the_watched_cpus_and_leaves_out_idle_iowait_and_steal(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    busy, own = read_proc({0, 1}, str(stat))
    # cpu0: user 100 + nice 10 + system 50 + irq 3 + softirq 2; cpu1: 200 + 100; cpu2 is not ours
    assert busy == pytest.approx((165 + 300) / 100)  # 100 ticks a second (SC_CLK_TCK on Linux)
    assert own >= 0
    assert read_proc({0}, str(tmp_path / "missing")) is None


def test_other_work_is_the_machines_busy_time_less_this_process_over_each_window():
    readings = iter([(10.0, 1.0), (11.5, 1.5), (12.0, 2.0), (14.0, 2.0)])
    now = [0.0]
    other = OtherWork(window_s=0.5, read=lambda: next(readings), clock=lambda: now[0])
    assert other.cores() == 0.0  # the first reading starts the window
    now[0] = 0.2
    assert other.cores() == 0.0  # within the window: no new reading
    now[0] = 1.0
    assert other.cores() == pytest.approx((1.5 - 0.5) / 1.0)  # busy 1.5 s, of which ours 0.5
    now[0] = 2.0
    assert other.cores() == 0.0  # all of the machine's work was ours
    now[0] = 3.0
    assert other.cores() == pytest.approx(2.0)


def test_without_proc_nothing_is_counted():
    other = OtherWork(window_s=0.0, read=lambda: None)
    assert other.cores() == 0.0 and other.cores() == 0.0


def test_a_busy_process_beside_this_one_is_seen():
    """A real process spinning on one core: about one core of other work (at least 0.6 on a loaded machine)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        other = OtherWork(window_s=1.0)
        other.cores()
        time.sleep(1.2)
        assert other.cores() >= 0.6
    finally:
        spinner.kill()
        spinner.wait()
