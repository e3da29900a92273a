"""persist's write-ahead log: every message received and not yet committed to DuckDB, on disk.

Each received message is appended with one unbuffered ``write`` (a killed process loses nothing the
kernel already has). Before a batch insert the log rotates to a new generation; the insert's
transaction records the generation it covers, and the files are deleted once a DuckDB checkpoint made
that transaction durable. On start-up, files of generations above the one the database file holds are
replayed. A crash anywhere therefore leaves every message in DuckDB, in the log, or in both — and
dedup makes "both" harmless. A generation is fsynced (``sync``) just before its insert, by the thread
that inserts, so that receiving never waits for the disk; against a power cut, at most the messages
of the batch being received are lost.

File ``wal-<generation>.log``: records of ``<u32 frame count><u32 length>*<frames...>``.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator, Sequence

_U32 = struct.Struct("<I")


class WriteAheadLog:
    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.generation = max(self.generations(), default=0) + 1
        self._fd = self._open(self.generation)

    def _path(self, generation: int) -> Path:
        return self.directory / f"wal-{generation:012d}.log"

    def _open(self, generation: int) -> int:
        return os.open(self._path(generation), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def generations(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("wal-*.log"))

    def append(self, frames: Sequence[bytes | memoryview]) -> None:
        header = _U32.pack(len(frames)) + b"".join(_U32.pack(len(frame)) for frame in frames)
        record = [header, *frames]
        written = os.writev(self._fd, record)  # the frames as they are: no copy of a message's records
        total = len(header) + sum(len(frame) for frame in frames)
        if written < total:  # a short write (rare, e.g. a signal): the rest as one block
            os.write(self._fd, b"".join(bytes(part) for part in record)[written:])

    def rotate(self) -> int:
        """Starts a new generation; returns the last one closed (everything appended so far)."""
        os.close(self._fd)
        closed = self.generation
        self.generation += 1
        self._fd = self._open(self.generation)
        return closed

    def sync(self, generation: int) -> None:
        """Waits until a closed generation's file is on disk."""
        try:
            fd = os.open(self._path(generation), os.O_RDONLY)
        except FileNotFoundError:
            return  # already covered by a checkpoint and discarded
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def discard_through(self, generation: int) -> None:
        for old in self.generations():
            if old <= generation and old != self.generation:
                self._path(old).unlink(missing_ok=True)

    def replay(self, after: int) -> Iterator[list[bytes]]:
        """The messages of closed generations above ``after``; a torn last record (a kill mid-write) ends a file."""
        for generation in self.generations():
            if generation <= after or generation == self.generation:
                continue
            data = self._path(generation).read_bytes()
            offset = 0
            while offset + 4 <= len(data):
                (count,) = _U32.unpack_from(data, offset)
                lengths_end = offset + 4 + 4 * count
                if count > 16 or lengths_end > len(data):
                    break
                lengths = [_U32.unpack_from(data, offset + 4 + 4 * i)[0] for i in range(count)]
                end = lengths_end + sum(lengths)
                if end > len(data):
                    break
                frames, position = [], lengths_end
                for length in lengths:
                    frames.append(data[position : position + length])
                    position += length
                yield frames
                offset = end

    def close(self) -> None:
        os.close(self._fd)
