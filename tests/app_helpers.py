"""Shared by the app tests: tiny offline models and a real `python app.py` server on a free localhost port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from server.app_outputs import APP_SUBDIR

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
DEMO = ROOT.parent / "shared" / "data" / "demo"
if not DEMO.is_dir():  # the app's own copy of the demo clips
    DEMO = ROOT / "assets" / "demo"
CLIP = DEMO / "old_man.mp4"
EDITED = DEMO / "edited" / "old_man__robot.png"
PROMPT = "a robot doing exercises for the body and mind"

# Small enough that one edit takes seconds on 2 CPU cores (10 inversion steps cover the 10 sampling steps).
TINY_EDIT = {"frames": 8, "fps": 8, "width": 64, "height": 64, "steps": 10, "inversion_steps": 10}
STARTUP_TIMEOUT = 180.0  # importing torch + diffusers + gradio on a loaded 2-core machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_models(root: Path, ip2p: bool = False, instantid: bool = False) -> dict[str, str]:
    """Tiny random models (the real classes) in `root`; the ANYV2V_* variables that point the app at them.

    `instantid` also plugs in the tests' face analyzer (bright boxes are faces, see tests/fake_faces.py)."""
    from anyv2v.tiny import make_tiny_model

    env = {"ANYV2V_MODEL": str(make_tiny_model(root / "i2vgen-xl-tiny"))}
    if ip2p:
        from editors import get_editor

        env["ANYV2V_IP2P_MODEL"] = str(get_editor("instruct_pix2pix").make_tiny_model(root / "ip2p-tiny"))
    if instantid:
        from editors import get_editor

        env["ANYV2V_INSTANTID_MODEL"] = str(get_editor("instantid").make_tiny_model(root / "instantid-tiny"))
        env["ANYV2V_FACE_ANALYZER"] = "tests.fake_faces:make_analyzer"
    return env


@dataclass
class AppServer:
    url: str
    output_dir: Path
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        return error.code == 401  # serving, behind its login (ANYV2V_AUTH)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def run_app(root: Path, model_env: Mapping[str, str], extra_args: tuple[str, ...] = ()) -> Iterator[AppServer]:
    """`python app.py` in a subprocess on a free port, offline; waits until it serves, always stops it."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    output_dir = root / "outputs"
    env = {
        **os.environ,
        **model_env,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(root / "gradio"),
        "ANYV2V_CACHE_DIR": str(root / "inversions"),
        "ANYV2V_OUTPUT_DIR": str(output_dir),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("GRADIO_SERVER_NAME", None)
    env.pop("GRADIO_SERVER_PORT", None)
    log_path = root / "app.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(APP), "--port", str(port), *extra_args],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    server = AppServer(url, output_dir / APP_SUBDIR, log_path, process)  # the app's own subfolder
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _ready(url):
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{server.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not serve within {STARTUP_TIMEOUT:.0f} s:\n{server.log()[-4000:]}")
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def read_mp4(path: str | os.PathLike) -> tuple[int, tuple[int, int], float]:
    """(frame count, (width, height), fps) of an mp4, decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, (stream.codec_context.width, stream.codec_context.height), float(stream.average_rate)


def jpeg_variants(directory: Path, size: tuple[int, int] = (64, 64)) -> dict[str, Path]:
    """JPEGs as phones and cameras write them, each stored red left / blue right (grey: light left / dark right):
    RGB, grey, CMYK, progressive, and one stored upside down with EXIF orientation 3 (so upright it is blue left)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    width, height = size
    image = Image.new("RGB", size, (220, 20, 20))
    image.paste((20, 20, 220), (width // 2, 0, width, height))
    paths = {}
    for name, picture, options in (
        ("rgb", image, {}),
        ("grey", image.convert("L"), {}),
        ("cmyk", image.convert("CMYK"), {}),
        ("progressive", image, {"progressive": True, "optimize": True}),
    ):
        paths[name] = directory / f"{name}.jpg"
        picture.save(paths[name], format="JPEG", quality=95, **options)
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotate 180 degrees to show
    paths["exif"] = directory / "exif-rotated.jpeg"
    image.save(paths["exif"], format="JPEG", quality=95, exif=exif)
    return paths
