"""FrameReader cuts RFC 6455 frames out of large reads, whatever way the bytes arrive."""
from __future__ import annotations

import os
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.wsframes import BINARY, CLOSE, CONTINUATION, OVERSIZED, PING, TEXT, FrameReader


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = bytes([first, (0x80 if mask else 0) | length])
    elif length < 1 << 16:
        header = bytes([first, (0x80 if mask else 0) | 126]) + struct.pack("!H", length)
    else:
        header = bytes([first, (0x80 if mask else 0) | 127]) + struct.pack("!Q", length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header += mask
    return header + payload


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    client.settimeout(0.5)
    yield server, client
    server.close()
    client.close()


def read_all(reader: FrameReader, count: int) -> list[tuple[int, bytes]]:
    return [reader.next() for _ in range(count)]


def test_text_binary_and_every_length_encoding(pair):
    server, client = pair
    payloads = [(TEXT, b'{"a":1}'), (BINARY, b"x" * 200), (TEXT, b"y" * 70_000), (TEXT, b"")]
    server.sendall(b"".join(frame(op, p) for op, p in payloads))
    assert read_all(FrameReader(client, 1 << 20), 4) == payloads


def test_frames_split_into_single_bytes_are_reassembled(pair):
    server, client = pair
    data = frame(TEXT, b"hello") + frame(BINARY, b"w" * 300)

    def drip():
        for i in range(len(data)):
            server.send(data[i : i + 1])

    threading.Thread(target=drip).start()
    assert read_all(FrameReader(client, 1 << 20), 2) == [(TEXT, b"hello"), (BINARY, b"w" * 300)]


def test_masked_frames_are_unmasked(pair):
    server, client = pair
    server.sendall(frame(TEXT, b"masked payload", mask=b"\x01\x02\x03\x04"))
    assert FrameReader(client, 1 << 20).next() == (TEXT, b"masked payload")


def test_fragments_make_one_message_and_control_frames_pass_between(pair):
    server, client = pair
    server.sendall(frame(TEXT, b"he", fin=False) + frame(PING, b"p") + frame(CONTINUATION, b"llo", fin=False)
                   + frame(CONTINUATION, b"!", fin=True) + frame(CLOSE, b"\x03\xe8"))
    assert read_all(FrameReader(client, 1 << 20), 3) == [(PING, b"p"), (TEXT, b"hello!"), (CLOSE, b"\x03\xe8")]


def test_an_oversized_frame_is_skipped_without_being_held_and_the_next_one_is_read(pair):
    server, client = pair
    big = os.urandom(3_000_000)
    threading.Thread(target=server.sendall, args=(frame(TEXT, big) + frame(TEXT, b"after"),)).start()
    reader = FrameReader(client, max_frame=1_000_000)
    assert reader.next() == (OVERSIZED, b"")
    assert reader.next() == (TEXT, b"after")
    assert len(reader._buffer) < 1_000_000


def test_an_oversized_fragmented_message_is_refused_whole(pair):
    server, client = pair
    server.sendall(frame(TEXT, b"a" * 60, fin=False) + frame(CONTINUATION, b"b" * 60) + frame(TEXT, b"ok"))
    assert read_all(FrameReader(client, max_frame=100), 2) == [(OVERSIZED, b""), (TEXT, b"ok")]


def test_a_timeout_is_none_and_a_closed_peer_is_an_error(pair):
    server, client = pair
    reader = FrameReader(client, 1 << 20)
    assert reader.next() is None
    server.close()
    with pytest.raises(ConnectionError):
        reader.next()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([TEXT, BINARY]), st.binary(max_size=70_000)), min_size=1, max_size=6),
       st.integers(min_value=1, max_value=5000))
def test_any_frames_in_any_chunking_come_out_as_sent(frames, chunk):
    server, client = socket.socketpair()
    client.settimeout(2)
    try:
        data = b"".join(frame(op, p) for op, p in frames)

        def send():
            for i in range(0, len(data), chunk):
                server.sendall(data[i : i + chunk])

        threading.Thread(target=send).start()
        assert read_all(FrameReader(client, 1 << 20), len(frames)) == frames
    finally:
        server.close()
        client.close()
