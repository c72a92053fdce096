"""
The one-command demo (``make demo``): upscale real images with the example DAGs and show the files.

Without ``NOVITA_API_KEY`` it starts the bundled Novita emulator on a free loopback port and runs
``example_novita_upscale`` and ``example_novita_daily_batch`` against it with ``airflow dags test``.
With ``NOVITA_API_KEY`` set it runs ``example_novita_upscale`` at 2k against the real Novita API, on the
DAG's public sample image (this is billed by Novita). Two variables redirect that run, e.g. to a
stand-in for the API that cannot fetch from the internet:

- ``NOVITA_BASE_URL``: the API's base URL, the host of the connection (default ``https://api.novita.ai``);
- ``NOVITA_DEMO_IMAGE_URL``: the source image, which whoever serves the API must be able to download
  (default: the DAG's sample image).

Airflow runs in a throwaway AIRFLOW_HOME. The images land in ``demo-output/`` of the repository, or in
the folder ``NOVITA_DEMO_OUTPUT`` names; the demo replaces its ``single/`` and ``daily/`` subfolders
there and leaves the rest of that folder alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_emulator(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_novita.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base_url}/samples/", timeout=1).raise_for_status()
            return process, base_url
        except httpx.HTTPError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    process.terminate()
    sys.exit(f"The emulator did not start; see {log}")


def airflow(home: Path, env: dict[str, str], *args: str) -> None:
    log = home / f"{'-'.join(args[:3])}.log"
    print(f"$ airflow {' '.join(args)}", flush=True)
    with log.open("wb") as out:
        result = subprocess.run(
            ["airflow", *args], env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        print(log.read_text()[-4000:])
        sys.exit(f"airflow {args[0]} failed (exit {result.returncode}); full log: {log}")


def dags_test(home: Path, env: dict[str, str], dag_id: str, conf: dict[str, object], output: Path) -> None:
    airflow(home, env, "dags", "test", dag_id, "--conf", json.dumps(conf))
    # ``airflow dags test`` can exit 0 for a failed run: the images are the proof.
    if not output.is_dir() or not any(output.rglob("*.*")):
        print((home / f"dags-test-{dag_id}.log").read_text()[-4000:])
        sys.exit(f"{dag_id} wrote no image to {output}")


def describe(output: Path, folders: list[Path]) -> None:
    """Lists the images in ``folders`` (the ones this run wrote, each checked non-empty by dags_test)."""
    files = sorted(path for folder in folders for path in folder.rglob("*") if path.is_file())
    print(f"\nUpscaled images in {output}:")
    for path in files:
        with Image.open(path) as image:
            size = f"{image.width}x{image.height}"
            print(f"  {path.relative_to(output.parent)}  {image.format}  {size}  {path.stat().st_size} bytes")


def main() -> None:
    output = Path(os.environ.get("NOVITA_DEMO_OUTPUT") or ROOT / "demo-output").absolute()
    single, daily = output / "single", output / "daily"
    # Only the demo's own subfolders: NOVITA_DEMO_OUTPUT may name a folder that holds other files.
    for folder in (single, daily):
        shutil.rmtree(folder, ignore_errors=True)
    home = Path(tempfile.mkdtemp(prefix="novita-demo-airflow-"))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    emulator = None
    try:
        airflow(home, env, "db", "migrate")
        api_key = os.environ.get("NOVITA_API_KEY")
        if api_key:
            connection = {"conn_type": "novita", "password": api_key}
            # Unset, the connection has no host, which means Novita's own API.
            base_url = os.environ.get("NOVITA_BASE_URL")
            if base_url:
                connection["host"] = base_url
            where = base_url or "https://api.novita.ai"
            print(f"NOVITA_API_KEY is set: using the Novita API at {where} (billed).")
            env["AIRFLOW_CONN_NOVITA_DEFAULT"] = json.dumps(connection)
            conf: dict[str, object] = {"resolution": "2k", "output_path": f"file://{single}/"}
            # Unset, the DAG's own default applies: its public sample image.
            image_url = os.environ.get("NOVITA_DEMO_IMAGE_URL")
            if image_url:
                conf["image_url"] = image_url
            dags_test(home, env, "example_novita_upscale", conf, single)
            written = [single]
        else:
            emulator, base_url = start_emulator(home / "emulator.log")
            print(f"Started the Novita emulator at {base_url} (no NOVITA_API_KEY set).")
            env["AIRFLOW_CONN_NOVITA_DEFAULT"] = json.dumps(
                {"conn_type": "novita", "host": base_url, "password": "emulator-key"}
            )
            dags_test(
                home,
                env,
                "example_novita_upscale",
                {
                    "image_url": f"{base_url}/samples/landscape.png",
                    "resolution": "4k",
                    "output_format": "png",
                    "output_path": f"file://{single}/",
                },
                single,
            )
            dags_test(
                home,
                env,
                "example_novita_daily_batch",
                {
                    "image_urls": [
                        f"{base_url}/samples/{name}"
                        for name in ("landscape.png", "portrait.jpg", "square.webp")
                    ],
                    "resolution": "2k",
                    "output_root": f"file://{daily}",
                },
                daily,
            )
            written = [single, daily]
        describe(output, written)
        print(f"\nAirflow logs of this demo: {home}")
    finally:
        if emulator is not None:
            emulator.send_signal(signal.SIGTERM)
            emulator.wait(timeout=20)
            print("Stopped the emulator.")


if __name__ == "__main__":
    main()
