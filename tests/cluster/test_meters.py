"""The soak's meters: CPU and RSS per component from /proc, and the provider's share of py-spy's samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from tests.cluster.meters import SELF, ComponentMeter, ProviderProfile

if TYPE_CHECKING:
    from tests.deployment import AirflowDeployment

# Forks a child; both burn 0.4 s of CPU; the child lives on for a second (the meter sees it alive),
# then the parent reaps it, prints what both spent and waits for its standard input to close.
BURNER = """
import os, sys, time
def burn(seconds):
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
if os.fork() == 0:
    burn(0.4)
    time.sleep(1.0)
    os._exit(0)
burn(0.4)
os.wait()
times = os.times()
print(times.user + times.system + times.children_user + times.children_system, flush=True)
sys.stdin.read()
"""


def test_a_component_counts_its_whole_session_and_a_reaped_child_once() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", BURNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        deployment = cast("AirflowDeployment", SimpleNamespace(processes={"scheduler": process}))
        with ComponentMeter(deployment) as meter:
            spent = float(process.stdout.readline())
        figures = meter.figures()
    finally:
        process.stdin.close()
        process.wait(timeout=30)

    assert spent >= 0.8
    # Read in clock ticks (10 ms) per process; the child counted once, through its parent.
    assert abs(figures["scheduler"]["cpu_seconds"] - spent) <= 0.1
    assert figures["scheduler"]["peak_rss_mb"] > 1
    assert SELF in figures


def test_the_provider_share_counts_samples_with_its_frames_anywhere_or_on_top(tmp_path: Path) -> None:
    profile = ProviderProfile(tmp_path / "py-spy", tmp_path)
    worker = SimpleNamespace(pid=4242, poll=lambda: 0)
    profile._recorders[4242] = ("celery-worker", cast("Any", worker))
    (tmp_path / "celery-worker-4242.txt").write_text(
        "process 1;run (airflow/task.py:1);execute (airflow_provider_novita/operators/upscale.py:9) 3\n"
        "process 1;execute (airflow_provider_novita/operators/upscale.py:9);send (httpx/_client.py:5) 5\n"
        "process 1;run (airflow/task.py:1);parse (airflow/dag.py:2) 12\n"
    )

    assert profile.shares() == {
        "celery-worker": {
            "samples": 20,
            "provider_share": 0.4,
            "provider_on_top_share": 0.15,
            "provider_samples_by_callee": {"in httpx/_client.py send": 5, "in the provider itself": 3},
        }
    }
