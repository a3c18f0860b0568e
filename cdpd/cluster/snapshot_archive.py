"""The archive a profiles snapshot is stored as: a tar of the copied SQLite files, compressed
with zstd as it is written (a stream: neither the tar nor a file is ever whole in memory).

Snapshots stored before compression are plain tars. A reader tells the two apart by the
archive's first bytes (zstd's frame magic number; a tar starts with a member's name), so a node
restores whichever it finds during a rolling upgrade. Each function here blocks: call it in a
thread.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import zstandard

# zstd's fastest level. At 100,000 profiles (bench/profiles_snapshot.py) level 3 packed 11%
# smaller but took the holder 4.3-5.3 s to copy against 2.3-4.0 s, and restored no faster.
# One thread: the other core is the stages'.
LEVEL = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # every zstd frame starts with it (RFC 8878, 3.1.1)
STREAM_BUFFER_BYTES = 1024 * 1024


def pack(files: Mapping[str, Path], archive_path: Path) -> None:
    """Write each file (by its name in the archive) into a compressed tar at `archive_path`."""
    compressor = zstandard.ZstdCompressor(level=LEVEL)
    with (
        archive_path.open("wb") as raw,
        compressor.stream_writer(raw, write_size=STREAM_BUFFER_BYTES, closefd=False) as packed,
        tarfile.open(fileobj=packed, mode="w|", bufsize=STREAM_BUFFER_BYTES) as tar,
    ):
        _copy_in_large_pieces(tar)
        for name, path in files.items():
            tar.add(path, arcname=name)


def extract(archive_path: Path, folder: Path) -> None:
    """Put the archive's files into `folder`, whether it is compressed or a plain tar."""
    with _tar_of(archive_path) as tar:
        tar.extractall(folder, filter="data")


def is_compressed(archive_path: Path) -> bool:
    with archive_path.open("rb") as raw:
        return raw.read(len(ZSTD_MAGIC)) == ZSTD_MAGIC


@contextmanager
def _tar_of(archive_path: Path) -> Iterator[tarfile.TarFile]:
    if not is_compressed(archive_path):
        with tarfile.open(archive_path) as tar:  # stored before snapshots were compressed
            yield tar
        return
    with (
        archive_path.open("rb") as raw,
        _decompressed(raw) as stream,
        tarfile.open(fileobj=stream, mode="r|", bufsize=STREAM_BUFFER_BYTES) as tar,
    ):
        _copy_in_large_pieces(tar)
        yield tar


def _decompressed(raw: BinaryIO) -> zstandard.ZstdDecompressionReader:
    return zstandard.ZstdDecompressor().stream_reader(raw, read_size=STREAM_BUFFER_BYTES)


def _copy_in_large_pieces(tar: tarfile.TarFile) -> None:
    """tarfile copies a member in 16 KiB pieces by default, each one a call into the codec:
    packing took four times as long as with 1 MiB pieces."""
    tar.copybufsize = STREAM_BUFFER_BYTES  # type: ignore[attr-defined]  # typeshed omits it
