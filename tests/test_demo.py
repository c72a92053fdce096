"""
``make demo`` with ``NOVITA_API_KEY`` set: the real-API branch of scripts/demo.py, end to end.

That branch is billed by Novita, so the test points it at the bundled emulator posing as the API: an
emulator that accepts one key only, reached through ``NOVITA_BASE_URL``, serving the source image
named by ``NOVITA_DEMO_IMAGE_URL``. The demo runs as the user runs it, in a process of its own, and
writes into ``NOVITA_DEMO_OUTPUT`` (here a temporary folder, never the repository's demo-output/).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

from airflow_provider_novita.emulator.pytest_plugin import EmulatorFactory

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-demo-test-5f1c0e9a7b3d4c21"
# The demo migrates a database and runs a DAG with a deferral: about 20 seconds on a 2-core machine.
DEMO_TIMEOUT = 180


def run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """
    Runs scripts/demo.py to its end and returns its output; whatever it started (``airflow dags test``
    and its children) is killed when this returns or raises, a timeout and a failed test included.
    """
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Its own process group, so that the whole tree can be stopped at once.
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=DEMO_TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_with_an_api_key_the_demo_upscales_one_sample_at_the_api_it_is_pointed_at(
    novita_emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    api = novita_emulator_factory(api_key=API_KEY)
    image_url = f"{api.base_url}/samples/landscape.png"
    output = tmp_path / "demo-output"
    # A user's shell, not this test process's: tests/conftest.py points AIRFLOW_* at the tests' own
    # Airflow home and database, which the demo must not touch.
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AIRFLOW_", "NOVITA_"))}
    env |= {
        "NOVITA_API_KEY": API_KEY,
        "NOVITA_BASE_URL": api.base_url,
        "NOVITA_DEMO_IMAGE_URL": image_url,
        "NOVITA_DEMO_OUTPUT": str(output),
        # The demo's throwaway AIRFLOW_HOME, which it keeps for the user to read, lands here too.
        "TMPDIR": str(tmp_path),
    }

    demo = run_demo(env)

    assert demo.returncode == 0, f"stdout:\n{demo.stdout}\nstderr:\n{demo.stderr[-5000:]}"
    (result,) = (output / "single").iterdir()
    with Image.open(result) as image:
        image.load()
        # landscape.png is 640x360; 2k puts 2048 pixels on the long side.
        assert (image.format, image.size) == ("PNG", (2048, 1152))
    stats = api.stats()
    assert stats["accepted_submissions"] == 1, "billed once"
    assert stats["submissions_by_image"] == {image_url: 1}
    assert API_KEY not in demo.stdout
