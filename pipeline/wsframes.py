"""Receiving WebSocket frames in large reads: the hot path of ingest.

websocket-client makes three ``recv`` calls per frame (header, length, payload), which caps a
Python process at a few tens of thousands of frames a second. After websocket-client's handshake,
``FrameReader`` reads the same socket in 256 KB chunks and cuts frames out of the buffer (RFC 6455
section 5.2); sending (subscriptions, pongs, keep-alives, close) stays with websocket-client.

A frame longer than ``max_frame`` is skipped as it streams past, never held in memory, and
reported as ``OVERSIZED`` so that ingest counts it. Fragmented messages are reassembled (within the
same limit). Server frames are unmasked, but a masked one is unmasked all the same.
"""
from __future__ import annotations

import socket
import struct

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OVERSIZED = -1  # pseudo-opcode: a frame (or message) above max_frame was skipped
CHUNK = 262_144

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class FrameReader:
    def __init__(self, sock: socket.socket, max_frame: int):
        self.sock, self.max_frame = sock, max_frame
        self._buffer = b""
        self._pos = 0
        self._skipping = 0  # bytes of an oversized frame still to discard
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._fragments_opcode = TEXT
        self._fragments_oversized = False

    def next(self) -> tuple[int, bytes] | None:
        """The next whole message ``(opcode, payload)``; None when the socket timeout passed first.

        Raises ``ConnectionError`` when the peer closed the TCP connection.
        """
        while True:
            frame = self._cut()
            if frame is not None:
                message = self._assemble(*frame)
                if message is not None:
                    return message
                continue
            if not self._fill():
                return None

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(CHUNK)
        except (socket.timeout, TimeoutError):
            return False
        if not data:
            raise ConnectionError("the server closed the connection")
        if self._skipping:
            dropped = min(self._skipping, len(data))
            self._skipping -= dropped
            data = data[dropped:]
        rest = len(self._buffer) - self._pos
        self._buffer = (self._buffer[self._pos :] + data) if rest else data
        self._pos = 0
        return True

    def _cut(self) -> tuple[bool, int, bytes | None] | None:
        """(fin, opcode, payload or None when oversized) of the next frame in the buffer, if whole."""
        buffer, pos = self._buffer, self._pos
        available = len(buffer) - pos
        if self._skipping or available < 2:
            return None
        first, second = buffer[pos], buffer[pos + 1]
        length, header = second & 0x7F, 2
        if length == 126:
            if available < 4:
                return None
            length, header = _U16.unpack_from(buffer, pos + 2)[0], 4
        elif length == 127:
            if available < 10:
                return None
            length, header = _U64.unpack_from(buffer, pos + 2)[0], 10
        masked = second & 0x80
        if masked:
            header += 4
        fin, opcode = bool(first & 0x80), first & 0x0F
        if length > self.max_frame and opcode < CLOSE:
            consumed = min(available, header + length)
            self._pos = pos + consumed
            self._skipping = header + length - consumed
            return fin, opcode, None
        end = pos + header + length
        if end > len(buffer):
            return None
        payload = buffer[pos + header : end]
        if masked:
            payload = _unmask(payload, buffer[pos + header - 4 : pos + header])
        self._pos = end
        return fin, opcode, payload

    def _assemble(self, fin: bool, opcode: int, payload: bytes | None) -> tuple[int, bytes] | None:
        if opcode >= CLOSE:  # control frames are never fragmented
            return opcode, payload or b""
        if opcode != CONTINUATION:
            if fin:
                return (OVERSIZED, b"") if payload is None else (opcode, payload)
            self._fragments, self._fragments_size, self._fragments_opcode = [], 0, opcode
            self._fragments_oversized = False
        if payload is None or self._fragments_size + len(payload) > self.max_frame:
            self._fragments_oversized, self._fragments = True, []
        elif not self._fragments_oversized:
            self._fragments.append(payload)
            self._fragments_size += len(payload)
        if not fin:
            return None
        if self._fragments_oversized:
            return OVERSIZED, b""
        message, self._fragments = b"".join(self._fragments), []
        return self._fragments_opcode, message


def _unmask(payload: bytes, key: bytes) -> bytes:
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")
