"""CURVE security for the results channel: key files, the bind policy, and a ZAP
authenticator that fails closed.

libzmq accepts any CURVE client when no authenticator runs; here every secured socket
sets ``ZAP_ENFORCE_DOMAIN``, so a missing or stopped authenticator means no handshake.

Key files are ZeroMQ certificates (pyzmq's ``zmq.auth.load_certificate`` reads them):
``NAME.key`` holds the public key, ``NAME.key_secret`` both keys (mode 0600). A publisher's
keys directory holds ``server.key_secret`` (its own pair) and ``clients/*.key`` (the public
keys of the subscribers it lets in)."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import struct
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

from hepascope.core.errors import ConfigError, HepascopeError

log = logging.getLogger(__name__)

ZAP_DOMAIN = "hepascope"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27
SERVER_NAME = "server"
CLIENTS_DIR = "clients"


class SecurityError(HepascopeError, PermissionError):
    """The results channel's security settings are refused."""


class InsecureBindError(SecurityError):
    """A publisher would bind a non-loopback address without CURVE keys (and without
    ``--insecure``)."""


class KeyFileError(SecurityError):
    """A key file or keys directory is missing, unreadable, malformed or too open."""


class KeyPermissionError(KeyFileError):
    """A key file or keys directory that other users can write (or, for a secret key, read),
    or that another user owns: refused as ssh refuses an unprotected private key."""


class KeyFormatError(KeyFileError, ValueError):
    """A key file whose key is not a valid Z85 CURVE key (length, alphabet, value), or not
    the kind expected (a public key where a secret one belongs)."""


# mode bits that make a path unsafe: anyone but the owner writing it; for a secret key,
# anyone but the owner having any access (ssh: "permissions 0644 are too open")
OTHERS_WRITE = 0o022
OTHERS_ANY = 0o077
_Z85 = frozenset(z85.Z85CHARS)
KEY_CHARS = 40  # a 32-byte CURVE key in Z85


def _who(bits: int) -> str:
    group, other = bool(bits & 0o070), bool(bits & 0o007)
    return "group and others" if group and other else "group" if group else "others"


def check_protected(path: Path, what: str, forbidden: int) -> None:
    """Refuse ``path`` (a ``what``: "secret key file", "keys directory", ...) when its mode
    has any ``forbidden`` bit or another user (not us, not root) owns it. Mode bits, not
    ``access()``: root passes every access check."""
    try:
        st = path.stat()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read the {what} ({e.strerror})") from e
    if os.name != "posix":
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & forbidden:
        bad = mode & forbidden
        can = "write" if bad & OTHERS_WRITE else "read" if bad & 0o044 else "access"
        fix = "600" if forbidden == OTHERS_ANY and not path.is_dir() else "go-w"
        raise KeyPermissionError(
            f"UNPROTECTED {what.upper()} {path}: permissions {mode:04o} are too open "
            f"({_who(bad)} can {can} it); chmod {fix} {path}")
    uid = os.geteuid()
    if st.st_uid not in (uid, 0):
        raise KeyPermissionError(f"{path}: {what} is owned by uid {st.st_uid}, not by you "
                                 f"(uid {uid}) or root; chown it or use your own")


def _z85_key(key: bytes, path: Path, which: str) -> bytes:
    """``key`` if it is 40 characters of Z85 that decode to 32 bytes, else one clear line."""
    if len(key) != KEY_CHARS:
        raise KeyFormatError(f"{path}: the {which} key is {len(key)} characters; a CURVE key "
                             f"is {KEY_CHARS} characters of Z85")
    bad = "".join(sorted({chr(c) for c in key if c not in _Z85}))
    if bad:
        raise KeyFormatError(f"{path}: the {which} key has characters outside Z85: {bad!r}")
    try:
        z85.decode(key)
    except (ValueError, struct.error) as e:  # a 5-character group worth more than 2**32 - 1
        raise KeyFormatError(f"{path}: the {which} key is not valid Z85 (a 5-character "
                             "group exceeds 32 bits)") from e
    return key


def _write(path: Path, text: str, mode: int) -> None:
    # created with its final mode: a secret is never readable by others, not even briefly
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write a new CURVE key pair as ``name.key`` (public, 0644) and ``name.key_secret``
    (0600) into ``directory`` (made 0700 if new; refused if others can write it); never
    overwrites. Returns (public file, secret file)."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"invalid key name {name!r}")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_protected(directory, "keys directory", OTHERS_WRITE)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise KeyFileError(f"{p} exists: refusing to overwrite a key")
    pub, sec = zmq.curve_keypair()
    made = datetime.now().isoformat(timespec="seconds")
    head = f"#   hepascope CURVE key '{name}', made {made}\n"
    body = f'metadata\n    name = "{name}"\ncurve\n    public-key = "{pub.decode()}"\n'
    _write(secret, head + "#   SECRET: never share this file\n" + body
           + f'    secret-key = "{sec.decode()}"\n', 0o600)
    _write(public, head + "#   public: give it to the other side\n" + body, 0o644)
    return public, secret


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{path}: not a readable key file ({e})") from e
    return (_z85_key(public, path, "public"),
            None if secret is None else _z85_key(secret, path, "secret"))


def load_public_key(path: Path) -> bytes:
    """The Z85 public key in a ``.key`` (or ``.key_secret``) file, which others must not
    be able to write (a pinned or allow-listed key swapped is an open door)."""
    check_protected(path, "public key file", OTHERS_WRITE)
    return _load(path)[0]


def load_secret_key(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file, which nobody but its owner may read
    or write, nor write its directory (as ssh does for private keys)."""
    check_protected(path.parent, "keys directory", OTHERS_WRITE)
    check_protected(path, "secret key file", OTHERS_ANY)
    public, secret = _load(path)
    if secret is None:
        raise KeyFormatError(f"{path}: holds only a public key where a secret key belongs "
                             "(pass the .key_secret file)")
    if zmq.curve_public(secret) != public:
        raise KeyFormatError(f"{path}: public and secret keys do not match")
    return public, secret


def fingerprint(key: bytes) -> str:
    """A short, greppable prefix of a Z85 public key (it is what the .key file shows)."""
    return key[:8].decode("ascii", "replace") + "..."


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """A publisher's own pair and the subscriber keys it lets in."""

    public: bytes
    secret: bytes
    allowed: frozenset[bytes]
    allow_dir: Path

    @classmethod
    def from_dir(cls, directory: Path) -> ServerKeys:
        """``directory/server.key_secret`` and ``directory/clients/*.key``."""
        clients = directory / CLIENTS_DIR
        check_protected(directory, "keys directory", OTHERS_WRITE)
        if not clients.is_dir():
            raise KeyFileError(f"{clients}: no allow-list directory (put the subscribers' "
                               "public .key files there)")
        check_protected(clients, "allow-list directory", OTHERS_WRITE)
        public, secret = load_secret_key(directory / f"{SERVER_NAME}.key_secret")
        allowed = frozenset(load_public_key(p) for p in sorted(clients.glob("*.key")))
        if not allowed:
            log.warning("allow-list %s is empty: every subscriber will be rejected", clients)
        return cls(public, secret, allowed, clients)


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """A subscriber's own pair and the publisher's pinned public key."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_key: Path, client_secret: Path) -> ClientKeys:
        """The pinned ``server.key`` (it and its directory writable by no one else) and
        this subscriber's ``.key_secret``."""
        public, secret = load_secret_key(client_secret)
        check_protected(server_key.parent, "keys directory", OTHERS_WRITE)
        return cls(load_public_key(server_key), public, secret)


def is_loopback(endpoint: str) -> bool:
    """Whether binding ``endpoint`` exposes nothing beyond this host."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False  # pgm, udp, ws, ...: network transports
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name, a DNS name


def check_bind(endpoint: str, secured: bool, insecure: bool) -> None:
    """Refuse an unauthenticated bind beyond loopback unless ``insecure`` says so (then
    warn loudly)."""
    if secured or is_loopback(endpoint):
        return
    if not insecure:
        raise InsecureBindError(
            f"{endpoint} is reachable from the network: give CURVE keys (--keys DIR, made "
            "with 'hepascope keys') or pass --insecure to publish unauthenticated")
    log.warning("INSECURE: publishing results on %s without authentication or encryption; "
                "anyone on the network can read them and impersonate this publisher", endpoint)


def secure_server(sock: zmq.Socket[Any], keys: ServerKeys) -> None:
    """Make ``sock`` a CURVE server that needs the ZAP authenticator (fail closed)."""
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)


def secure_client(sock: zmq.Socket[Any], keys: ClientKeys) -> None:
    """Make ``sock`` a CURVE client that talks only to the pinned server key."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


class ZapAuthenticator:
    """A ZAP (RFC 27) handler on ``context`` that lets in the CURVE keys in ``allowed``
    for ``domain`` and nothing else; each rejection is one warning line with the key's
    prefix and the peer address. One per context (the ZAP endpoint is per context)."""

    def __init__(self, context: zmq.Context[Any], allowed: frozenset[bytes],
                 domain: str = ZAP_DOMAIN) -> None:
        self._allowed = {z85.decode(k) for k in allowed}
        self._domain = domain.encode()
        self._sock = context.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            self._sock.close(0)
            raise SecurityError(f"cannot start the authenticator: {e}") from e
        self.accepted = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="hepascope-zap")
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if self._sock.poll(50, zmq.POLLIN):
                    self._sock.send_multipart(self._answer(self._sock.recv_multipart()))
        finally:
            self._sock.close(0)  # from here on every handshake fails (enforced domain)

    def _answer(self, req: list[bytes]) -> list[bytes]:
        if len(req) < 6:  # libzmq never sends this; answer so the REP socket stays usable
            return [b"1.0", req[1] if len(req) > 1 else b"", b"400", b"bad request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = req[:6]
        key = req[6] if mechanism == b"CURVE" and len(req) > 6 else b""
        ok = domain == self._domain and len(key) == 32 and key in self._allowed
        if ok:
            self.accepted += 1
            return [version, request_id, b"200", b"OK", z85.encode(key), b""]
        self.rejected += 1
        who = fingerprint(z85.encode(key)) if len(key) == 32 else mechanism.decode()
        log.warning("results channel: rejected subscriber key %s from %s (%s)", who,
                    address.decode(errors="replace") or "?",
                    "not in the allow-list" if domain == self._domain else "wrong ZAP domain")
        return [version, request_id, b"400", b"not allowed", b"", b""]

    def stop(self) -> None:
        """Stop answering: subsequent handshakes fail (the socket enforces the domain)."""
        self._stop.set()
        self._thread.join(5.0)
