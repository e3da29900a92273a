"""ZeroMQ PUSH/PULL as every stage uses it.

PULL binds and PUSH connects, so both ends of a hop are given the same endpoint and any number of
pushers can feed one puller. Sends never block: a message that would block (the high-water mark is
reached because downstream is slow or gone) is dropped and its records are counted, so a stalled
stage can never stall a WebSocket read upstream.

CURVE (``pipeline.curve``) is off unless keys are given: a Puller with ``ServerKeys`` is a CURVE server
that admits only the authorized client keys, a Pusher with ``ClientKeys`` a CURVE client. Without
keys the sockets are exactly the plain ones.
"""
from __future__ import annotations

import time
from typing import Sequence

import zmq
from loguru import logger

from pipeline import curve, metrics

LINGER_MS = 2000
REDIAL_SECS = 5.0  # a CURVE pusher the peer refused dials again after this long


def context() -> zmq.Context:
    return zmq.Context.instance()


class Pusher:
    def __init__(self, endpoint: str, hwm: int, stage: str, ctx: zmq.Context | None = None,
                 curve_keys: curve.ClientKeys | None = None, settings=None):
        """``settings``: a stage's loaded config; its ZMQ_CURVE_* settings give ``curve_keys`` (or None)."""
        if curve_keys is None and settings is not None:
            curve_keys = curve.client_keys(settings)
        self.endpoint = endpoint
        self.socket = (ctx or context()).socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        self.curve = curve_keys is not None
        self._monitor: zmq.Socket | None = None
        self._redial_at: float | None = None
        self._refusals = 0
        if curve_keys is not None:
            curve.make_client(self.socket, curve_keys)
            # libzmq gives up on an endpoint whose peer refused the handshake; watch for that (see _refused)
            self._monitor = self.socket.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_SUCCEEDED)
            logger.info("PUSH {}: CURVE on (server key {})", endpoint, curve_keys.server_key.decode())
        self.socket.connect(endpoint)
        self._dropped = metrics.MESSAGES_DROPPED.labels(stage=stage)
        self.dropped_records = 0
        self.last_drop_monotonic: float | None = None

    def send(self, frames: Sequence, records: int) -> bool:
        """Sends without blocking; on a full queue drops the message and counts its records."""
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self._dropped.inc(records)
            self.dropped_records += records
            self.last_drop_monotonic = time.monotonic()
            if self._monitor is not None:
                self._refused(self.last_drop_monotonic)
            return False

    def _refused(self, now: float) -> None:
        """CURVE only, on a drop: a peer that refused our keys makes libzmq drop the endpoint for good, so
        every send fails from then on. Say so once, and dial again every REDIAL_SECS (the operator may
        authorize this key and restart the peer)."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._redial_at = None
            elif self._redial_at is None:
                self._refusals += 1
                self._redial_at = now + REDIAL_SECS
                (logger.warning if self._refusals == 1 else logger.debug)(
                    "PUSH {}: the peer refused the CURVE handshake ({}): is this end's public key in its "
                    "ZMQ_CURVE_AUTHORIZED_KEYS, and ZMQ_CURVE_SERVER_KEY_FILE the peer's public key? "
                    "Dialing again every {:.0f}s; records are dropped and counted meanwhile", self.endpoint,
                    "key not authorized" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "protocol error",
                    REDIAL_SECS)
        if self._redial_at is not None and now >= self._redial_at:
            self._redial_at = None
            try:
                self.socket.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass  # libzmq already forgot the endpoint
            self.socket.connect(self.endpoint)

    def close(self, linger_ms: int = LINGER_MS) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self.socket.close(linger=linger_ms)


class Puller:
    def __init__(self, endpoint: str, hwm: int, ctx: zmq.Context | None = None,
                 curve_keys: curve.ServerKeys | None = None, settings=None):
        """``settings``: a stage's loaded config; its ZMQ_CURVE_* settings give ``curve_keys`` (or None)."""
        if curve_keys is None and settings is not None:
            curve_keys = curve.server_keys(settings)
        self.endpoint = endpoint
        self.socket = (ctx or context()).socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.curve = curve_keys is not None
        self._authenticator = None
        if curve_keys is not None:
            self._authenticator = curve.make_server(self.socket, curve_keys)
            logger.info("PULL {}: CURVE on (public key {}), {} authorized client key(s) from {}", endpoint,
                        curve_keys.public_key.decode(), len(curve_keys.authorized), curve_keys.location)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)

    def recv(self, timeout_ms: int) -> list | None:
        """The next message's frames, or None when nothing came within the timeout."""
        if not self._poller.poll(timeout_ms):
            return None
        return self.socket.recv_multipart(copy=False)

    def recv_nowait(self) -> list | None:
        try:
            return self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
