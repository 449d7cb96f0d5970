"""The shared store: a key is published only when complete (write, then commit), two writers of
one key do not corrupt it, fetches check every file; on a local folder and on a local
S3-compatible server (moto's, on 127.0.0.1)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from kiln.fleet.errors import StoreError, StoreIntegrityError
from kiln.fleet.store import Store

KEY = "ab" * 32


def _folder(root: Path, content: str, files: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"part{i}.bin").write_text(content * 64)
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "manifest.json").write_text(f'{{"by": "{content}"}}')
    return root


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return Store(tmp_path / "store")
    url, options = request.getfixturevalue("s3_store")
    return Store(f"{url}/{tmp_path.name}", **options)


def test_a_published_key_fetches_back_byte_for_byte(store: Store, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", "x")
    assert store.ref(KEY) is None

    ref = store.publish(KEY, src, {"stage": "build"})
    got = store.fetch(KEY, tmp_path / "dest")

    assert got.upload == ref.upload and ref.meta == {"stage": "build"}
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in (tmp_path / "dest").rglob("*.*")) == [
        "part0.bin",
        "part1.bin",
        "part2.bin",
        "sub/manifest.json",
    ]
    assert (tmp_path / "dest" / "sub" / "manifest.json").read_text() == '{"by": "x"}'


def test_publishing_a_published_key_keeps_the_first(store: Store, tmp_path: Path) -> None:
    first = store.publish(KEY, _folder(tmp_path / "a", "a"))

    second = store.publish(KEY, _folder(tmp_path / "b", "b"))

    assert second.upload == first.upload
    store.fetch(KEY, tmp_path / "dest")
    assert (tmp_path / "dest" / "part0.bin").read_text() == "a" * 64


def test_a_fetch_refuses_a_file_changed_after_its_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    ref = store.publish(KEY, _folder(tmp_path / "src", "x"))
    stored = tmp_path / "store" / "objects" / KEY / ref.upload / "part1.bin"
    stored.unlink()  # the fetch would hardlink the file: replace it rather than edit it in place
    stored.write_text("tampered")

    with pytest.raises(StoreIntegrityError, match=r"part1\.bin"):
        store.fetch(KEY, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()  # nothing half-fetched


def test_a_missing_key_is_one_line(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not in the store"):
        store.fetch("cd" * 32, tmp_path / "dest")


def test_leases_say_who_works_on_a_key_until_released(store: Store) -> None:
    path = store.lease(KEY, {"task": "cnn:export"})

    leases = store.leases()
    store.release(path)

    assert leases[KEY][0]["pid"] == os.getpid() and leases[KEY][0]["task"] == "cnn:export"
    assert KEY not in store.leases()


def _publish(url: str, folder: str, start: float) -> None:
    while time.time() < start:
        time.sleep(0.001)
    Store(url).publish(KEY, Path(folder))


def test_two_writers_of_one_key_leave_one_whole_artifact(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    folders = [_folder(tmp_path / name, name, files=40) for name in ("a", "b")]
    start = time.time() + 1.0
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_publish, args=(url, str(f), start)) for f in folders]

    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)

    assert [p.exitcode for p in procs] == [0, 0]
    Store(url).fetch(KEY, tmp_path / "dest")
    contents = {p.read_text()[0] for p in (tmp_path / "dest").glob("part*.bin")}
    assert len(contents) == 1  # every file from the same writer
    assert (tmp_path / "dest" / "sub" / "manifest.json").read_text() == f'{{"by": "{contents.pop()}"}}'


def test_a_writer_killed_mid_upload_publishes_nothing(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    folder = _folder(tmp_path / "src", "k", files=3000)
    proc = multiprocessing.get_context("spawn").Process(target=_publish, args=(url, str(folder), 0.0))
    proc.start()
    objects = tmp_path / "store" / "objects" / KEY
    deadline = time.monotonic() + 60
    while not (objects.is_dir() and any(objects.rglob("part*.bin"))) and time.monotonic() < deadline:
        time.sleep(0.005)

    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)

    assert proc.exitcode == -signal.SIGKILL
    assert Store(url).ref(KEY) is None  # the upload is there, unreferenced: the key is not
    again = Store(url).publish(KEY, folder)  # a retry publishes it whole
    assert len(again.files) == 3001
