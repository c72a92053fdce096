"""
The one-command demo (``make demo``): upscale real images with the example DAGs and show the files.

Without ``NOVITA_API_KEY`` it starts the bundled Novita emulator on a free loopback port and runs
``example_novita_upscale`` and ``example_novita_daily_batch`` against it with ``airflow dags test``.
With ``NOVITA_API_KEY`` set it runs ``example_novita_upscale`` against the real Novita API, on the
DAG's public sample image (this is billed by Novita).

Airflow runs in a throwaway AIRFLOW_HOME; the images land in ``demo-output/`` of the repository.
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
OUTPUT = ROOT / "demo-output"


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


def describe(folder: Path) -> None:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if not files:
        sys.exit(f"No images were written to {folder}")
    print(f"\nUpscaled images in {folder}:")
    for path in files:
        with Image.open(path) as image:
            size = f"{image.width}x{image.height}"
            print(f"  {path.relative_to(ROOT)}  {image.format}  {size}  {path.stat().st_size} bytes")


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="novita-demo-airflow-"))
    shutil.rmtree(OUTPUT, ignore_errors=True)
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
            print("NOVITA_API_KEY is set: using the real Novita API (billed).")
            env["AIRFLOW_CONN_NOVITA_DEFAULT"] = json.dumps({"conn_type": "novita", "password": api_key})
            dags_test(
                home,
                env,
                "example_novita_upscale",
                {"resolution": "2k", "output_path": f"file://{OUTPUT}/single/"},
            )
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
                    "output_path": f"file://{OUTPUT}/single/",
                },
                OUTPUT / "single",
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
                    "output_root": f"file://{OUTPUT}/daily",
                },
                OUTPUT / "daily",
            )
        describe(OUTPUT)
        print(f"\nAirflow logs of this demo: {home}")
    finally:
        if emulator is not None:
            emulator.send_signal(signal.SIGTERM)
            emulator.wait(timeout=20)
            print("Stopped the emulator.")


if __name__ == "__main__":
    main()
