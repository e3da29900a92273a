"""ZeroMQ CURVE keys: loading and checking the certificate files, and the ZAP authenticator.

Key files are the Z85 certificate files of ``zmq.auth.create_certificates`` (what ``collector keygen``
writes): ``NAME.key`` holds a public key, ``NAME.key_secret`` the public and the secret key. Every
problem with a file is a ``ConfigError`` naming the setting it came from, so a stage given a bad key
ends in one line and exit status 2, never in a traceback or a socket that silently accepts anyone.

A PULL socket is the CURVE server: it proves its identity with its secret key and lets in only the
clients whose public keys are listed (ZAP, ``zmq.auth.thread.ThreadAuthenticator``). A PUSH socket
is a CURVE client: its own key pair plus the public key of the server it connects to.
"""
from __future__ import annotations

import dataclasses
import glob
import os

import zmq
import zmq.auth
from zmq.utils import z85

from pipeline.config import ConfigError

SECRET_KEY_FILE = "ZMQ_CURVE_SECRET_KEY_FILE"
SERVER_KEY_FILE = "ZMQ_CURVE_SERVER_KEY_FILE"
AUTHORIZED_KEYS = "ZMQ_CURVE_AUTHORIZED_KEYS"


@dataclasses.dataclass(frozen=True)
class ClientKeys:
    """A PUSH socket's CURVE keys (Z85): its own pair and the public key of the PULL it connects to."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes

    def __repr__(self) -> str:  # never show a secret key, not even in a debugger or a traceback
        return f"ClientKeys(public_key={self.public_key!r}, server_key={self.server_key!r})"


@dataclasses.dataclass(frozen=True)
class ServerKeys:
    """A PULL socket's CURVE keys (Z85) and the public keys of the clients allowed in."""

    public_key: bytes
    secret_key: bytes
    authorized: frozenset[bytes]
    location: str  # the folder (or single file) they came from

    def __repr__(self) -> str:
        return f"ServerKeys(public_key={self.public_key!r}, authorized={len(self.authorized)} key(s) from {self.location!r})"


def _valid_key(key: bytes | None) -> bool:
    if not key or len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except Exception:  # noqa: BLE001 - z85 raises KeyError/ValueError on a bad character or length
        return False


def _certificate(variable: str, path: str) -> tuple[bytes, bytes | None]:
    if os.path.isdir(path):
        raise ConfigError(variable, f"{path!r} is a folder, not a key file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except FileNotFoundError:
        raise ConfigError(variable, f"no key file {path!r}") from None
    except OSError as exc:
        if not os.path.exists(path):
            raise ConfigError(variable, f"no key file {path!r}") from None
        raise ConfigError(variable, f"cannot read key file {path!r}: {exc.strerror or type(exc).__name__}") from None
    except ValueError:
        raise ConfigError(variable, f"{path!r} is not a ZeroMQ certificate file (no public-key line)") from None
    if not _valid_key(public):
        raise ConfigError(variable, f"{path!r} holds no valid Z85 public key (40 characters)")
    return public, secret


def load_secret(variable: str, path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; the public key is derived from the secret one."""
    public_in_file, secret = _certificate(variable, path)
    if secret is None:
        raise ConfigError(variable, f"{path!r} holds no secret key (give the .key_secret file, not the .key one)")
    if not _valid_key(secret):
        raise ConfigError(variable, f"{path!r} holds no valid Z85 secret key (40 characters)")
    public = zmq.curve_public(secret)
    if public != public_in_file:
        raise ConfigError(variable, f"the public and secret keys in {path!r} do not belong together")
    return public, secret


def load_public(variable: str, path: str) -> bytes:
    """The public key of a ``.key`` (or ``.key_secret``) file."""
    return _certificate(variable, path)[0]


def load_authorized(variable: str, location: str) -> frozenset[bytes]:
    """The public keys of every ``*.key`` file in a folder, or of one key file; at least one."""
    if os.path.isdir(location):
        files = sorted(glob.glob(os.path.join(glob.escape(location), "*.key")))
        if not files:
            raise ConfigError(variable, f"no public key files (*.key) in folder {location!r}")
    elif os.path.exists(location):
        files = [location]
    else:
        raise ConfigError(variable, f"no folder or key file {location!r}")
    return frozenset(load_public(variable, f) for f in files)


# -- settings -> keys (``conf`` is a ``pipeline.config.Config``; a setting a command does not load is off)

def client_keys(conf) -> ClientKeys | None:
    """The keys of a PUSH socket, or None when CURVE is off for it (``ZMQ_CURVE_SERVER_KEY_FILE`` empty)."""
    server_file = getattr(conf, SERVER_KEY_FILE.lower(), "")
    if not server_file:
        return None
    public, secret = load_secret(SECRET_KEY_FILE, _required_secret(conf, SERVER_KEY_FILE))
    return ClientKeys(public, secret, load_public(SERVER_KEY_FILE, server_file))


def server_keys(conf) -> ServerKeys | None:
    """The keys of a PULL socket, or None when CURVE is off for it (``ZMQ_CURVE_AUTHORIZED_KEYS`` empty)."""
    location = getattr(conf, AUTHORIZED_KEYS.lower(), "")
    if not location:
        return None
    public, secret = load_secret(SECRET_KEY_FILE, _required_secret(conf, AUTHORIZED_KEYS))
    return ServerKeys(public, secret, load_authorized(AUTHORIZED_KEYS, location), location)


def _required_secret(conf, because: str) -> str:
    path = getattr(conf, SECRET_KEY_FILE.lower(), "")
    if not path:
        raise ConfigError(SECRET_KEY_FILE, f"required when {because} is set")
    return path


# -- sockets

def make_client(socket: zmq.Socket, keys: ClientKeys) -> None:
    """Makes a socket a CURVE client; before it connects."""
    socket.curve_secretkey = keys.secret_key
    socket.curve_publickey = keys.public_key
    socket.curve_serverkey = keys.server_key


class _KeySet:
    """ZAP credentials provider for a single authorized key file (``configure_curve`` wants a folder)."""

    def __init__(self, keys: frozenset[bytes]):
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


ZAP_DOMAIN = "collector"


def make_server(socket: zmq.Socket, keys: ServerKeys) -> "zmq.auth.thread.ThreadAuthenticator":
    """Makes a socket a CURVE server that admits only the authorized keys; before it binds.

    Returns the running authenticator (one per context; stop it after closing the socket). The socket
    names a ZAP domain and enforces it, so libzmq asks the authenticator about every client and,
    were the authenticator ever missing, refuses the connection rather than letting it in. (With an
    empty domain and no enforcement, libzmq skips ZAP when no handler answers: fail-open.)
    """
    from zmq.auth.thread import ThreadAuthenticator

    authenticator = ThreadAuthenticator(socket.context)
    authenticator.start()
    if os.path.isdir(keys.location):
        # the folder was checked by ``load_authorized``; should a file go bad in between, pyzmq loads
        # no key at all and every client is refused (fails closed)
        authenticator.configure_curve(domain=ZAP_DOMAIN, location=keys.location)
    else:
        authenticator.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_KeySet(keys.authorized))
    socket.curve_secretkey = keys.secret_key
    socket.curve_publickey = keys.public_key
    socket.curve_server = True
    socket.zap_domain = ZAP_DOMAIN.encode()
    try:
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    except (AttributeError, zmq.ZMQError):  # an older libzmq: the authenticator is running anyway
        pass
    return authenticator
