"""CURVE on the results channel, over real loopback sockets on random ports: pinned
publisher key, subscriber allow-list, fail-closed authenticator, rejections logged, the
bind policy, and ``hepascope keys``."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.auth
from support import wire

from hepascope.cli import main
from hepascope.core.messages import TOPIC_RESULT, TOPIC_TELEMETRY
from hepascope.stream.publish import Publisher, Subscriber
from hepascope.stream.security import (
    ZAP_DOMAIN,
    ClientKeys,
    InsecureBindError,
    KeyFileError,
    ServerKeys,
    is_loopback,
    load_secret_key,
    secure_server,
    write_keypair,
)

WINDOW_S = 1.0  # how long each subscriber is given: a CURVE handshake takes milliseconds


def _result(seq: int) -> dict[str, Any]:
    return wire.result(seq, "curve-test")


def _received(send: Any, sub: Subscriber, seconds: float = WINDOW_S) -> int:
    """Publish with ``send(seq)`` every 10 ms for ``seconds``; messages ``sub`` accepted."""
    got = 0
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        send(seq)
        seq += 1
        sub.poll(10)
        got += sum(1 for _ in sub.drain())
    return got


def _pub_send(pub: Publisher) -> Any:
    return lambda seq: pub.send(TOPIC_RESULT, _result(seq))


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """server/ (a publisher's keys dir allowing 'good'), an impostor's, two client pairs."""
    root = tmp_path_factory.mktemp("keys")
    server = root / "server"
    write_keypair(server, "server")
    write_keypair(root / "impostor", "server")
    good_pub, good_sec = write_keypair(root / "clients_made", "good")
    _, bad_sec = write_keypair(root / "clients_made", "unknown")
    (server / "clients").mkdir()
    (server / "clients" / "good.key").write_bytes(good_pub.read_bytes())
    (root / "impostor" / "clients").mkdir()  # the impostor lets everybody it knows in
    (root / "impostor" / "clients" / "good.key").write_bytes(good_pub.read_bytes())
    return {"server": server, "impostor": root / "impostor",
            "server_pub": server / "server.key", "good": good_sec, "unknown": bad_sec}


def test_keys_cli_writes_a_certificate_pair(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", str(tmp_path / "k"), "--name", "overlay"]) == 0
    public, secret = tmp_path / "k" / "overlay.key", tmp_path / "k" / "overlay.key_secret"
    assert str(public) in capsys.readouterr().out
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    pub, sec = load_secret_key(secret)
    assert zmq.curve_public(sec) == pub and pub.decode() in public.read_text()
    assert "secret-key" not in public.read_text()
    # pyzmq's own reader takes our files (interoperable certificates)
    assert zmq.auth.load_certificate(public) == (pub, None)
    # never overwrites; a world-readable secret is refused
    assert main(["keys", str(tmp_path / "k"), "--name", "overlay"]) == 2
    secret.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_secret_key(secret)


def test_pinned_subscriber_accepts_nothing_from_an_impostor(keyring: dict[str, Any]) -> None:
    client = ClientKeys.from_files(keyring["server_pub"], keyring["good"])
    counts = {}
    # an impostor with its own key pair (allowing our client), then one without CURVE
    for name, make in (
            ("curve impostor", lambda: Publisher(
                "tcp://127.0.0.1:*", keys=ServerKeys.from_dir(keyring["impostor"]))),
            ("plain impostor", lambda: Publisher("tcp://127.0.0.1:*")),
            ("real publisher", lambda: Publisher(
                "tcp://127.0.0.1:*", keys=ServerKeys.from_dir(keyring["server"])))):
        pub = make()
        sub = Subscriber(pub.bound, keys=client)
        try:
            counts[name] = _received(_pub_send(pub), sub)
            assert sub.malformed == 0
        finally:
            sub.close()
            pub.close()
    print(f"\nimpostor messages accepted: {counts['curve impostor']} (CURVE), "
          f"{counts['plain impostor']} (no CURVE); real publisher: {counts['real publisher']}")
    assert counts["curve impostor"] == 0 and counts["plain impostor"] == 0
    assert counts["real publisher"] > 0  # the same client does get the pinned publisher's


def test_unknown_subscriber_gets_nothing_and_is_logged(
        keyring: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    pub = Publisher("tcp://127.0.0.1:*", keys=ServerKeys.from_dir(keyring["server"]))
    unknown = ClientKeys.from_files(keyring["server_pub"], keyring["unknown"])
    good = ClientKeys.from_files(keyring["server_pub"], keyring["good"])
    plain = Subscriber(pub.bound)  # no CURVE at all
    subs = {"unknown": Subscriber(pub.bound, keys=unknown),
            "allowed": Subscriber(pub.bound, keys=good)}
    counts = dict.fromkeys(subs, 0)
    plain_got = 0
    caplog.set_level(logging.WARNING, logger="hepascope.stream.security")
    try:
        deadline = time.monotonic() + WINDOW_S
        seq = 0
        while time.monotonic() < deadline:
            pub.send(TOPIC_RESULT, _result(seq))
            seq += 1
            time.sleep(0.01)
            for name, sub in subs.items():
                counts[name] += sum(1 for _ in sub.drain())
            plain_got += sum(1 for _ in plain.drain())
    finally:
        for sub in (*subs.values(), plain):
            sub.close()
        pub.close()
    assert pub.authenticator is not None
    rejections = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    print(f"\nunknown subscriber messages: {counts['unknown']}, allowed: {counts['allowed']}, "
          f"no-CURVE subscriber: {plain_got}; rejections logged: {len(rejections)} "
          f"(authenticator: {pub.authenticator.rejected} rejected, "
          f"{pub.authenticator.accepted} accepted)")
    assert counts["unknown"] == 0 and plain_got == 0 and counts["allowed"] > 0
    prefix = unknown.public[:8].decode()
    assert rejections and all("127.0.0.1" in m for m in rejections)
    assert any(prefix in m for m in rejections)
    assert len(rejections) == pub.authenticator.rejected  # each one, one line


@pytest.mark.parametrize("enforce", [1, 0])
def test_no_authenticator_means_no_handshake(keyring: dict[str, Any], enforce: int) -> None:
    """Our setting (ZAP_ENFORCE_DOMAIN=1) fails closed when no authenticator answers;
    libzmq's default (0) lets any client key in: the setting is what makes it closed."""
    keys = ServerKeys.from_dir(keyring["server"])
    # the *unknown* client: only an absent authenticator could let it in
    client = ClientKeys.from_files(keyring["server_pub"], keyring["unknown"])
    ctx = zmq.Context()  # no ZAP handler ever bound in this context
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    secure_server(sock, keys)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, enforce)
    sock.bind("tcp://127.0.0.1:*")
    sub = Subscriber(sock.getsockopt_string(zmq.LAST_ENDPOINT), keys=client)
    try:
        got = _received(lambda seq: sock.send_multipart(
            [TOPIC_RESULT, msgpack.packb(_result(seq))], zmq.NOBLOCK), sub)
    finally:
        sub.close()
        sock.close(0)
        ctx.term()
    print(f"\nno authenticator, ZAP_ENFORCE_DOMAIN={enforce} ({ZAP_DOMAIN}): "
          f"unknown client got {got} messages")
    assert (got == 0) if enforce else (got > 0)


def test_a_stopped_authenticator_fails_closed(keyring: dict[str, Any]) -> None:
    pub = Publisher("tcp://127.0.0.1:*", keys=ServerKeys.from_dir(keyring["server"]))
    assert pub.authenticator is not None
    pub.authenticator.stop()  # the authenticator thread is gone; the socket still serves
    sub = Subscriber(pub.bound, keys=ClientKeys.from_files(keyring["server_pub"],
                                                           keyring["good"]))
    try:
        got = _received(_pub_send(pub), sub)
    finally:
        sub.close()
        pub.close()
    print(f"\nauthenticator stopped: an allowed client got {got} messages")
    assert got == 0


def test_non_loopback_bind_needs_keys_or_insecure(
        keyring: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    for endpoint in ("tcp://0.0.0.0:0", "tcp://*:0"):
        with pytest.raises(InsecureBindError):
            Publisher(endpoint)
    caplog.set_level(logging.WARNING, logger="hepascope.stream.security")
    pub = Publisher("tcp://0.0.0.0:*", insecure=True)
    pub.close()
    warned = [r for r in caplog.records if "INSECURE" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    secured = Publisher("tcp://0.0.0.0:*", keys=ServerKeys.from_dir(keyring["server"]))
    secured.close()
    assert all(is_loopback(e) for e in ("tcp://127.0.0.1:5555", "tcp://[::1]:5", "ipc:///x",
                                       "tcp://localhost:1", "inproc://a", "tcp://127.0.0.1:*"))
    assert not any(is_loopback(e) for e in ("tcp://0.0.0.0:1", "tcp://*:1", "tcp://10.0.0.2:1",
                                           "tcp://eth0:1", "tcp://[::]:1", "udp://127.0.0.1:1",
                                           "tcp://example.org:1", "nonsense"))


def test_cli_binds_beyond_loopback_only_with_keys_or_insecure(
        tmp_path: Path, keyring: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The whole path: ``run --publish`` beyond loopback, no keys -> one error line, exit 2
    (the source and model are real; the bind policy stops it before any frame); with
    ``--keys DIR`` or ``--insecure`` it runs; a keys dir without its allow-list is refused."""
    from support.models import make_classifier

    model = make_classifier(tmp_path / "m.onnx")
    argv = ["run", "--source", "phantom:0", "--model", str(model), "--duration", "0.3",
            "--publish", "tcp://0.0.0.0:*"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--insecure" in err and "Traceback" not in err
    assert main([*argv, "--insecure"]) == 0
    assert main([*argv, "--keys", str(keyring["server"])]) == 0
    assert main([*argv, "--keys", str(keyring["server"] / "clients")]) == 2
    assert "allow-list" in capsys.readouterr().err


def test_overlay_cli_pins_the_server_key(keyring: dict[str, Any], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``hepascope overlay --server-key --client-key`` against a real CURVE publisher."""
    import threading

    pub = Publisher("tcp://127.0.0.1:*", keys=ServerKeys.from_dir(keyring["server"]))
    stop = threading.Event()

    def pump() -> None:
        seq = 0
        while not stop.is_set():
            pub.send(TOPIC_RESULT, _result(seq))
            pub.send(TOPIC_TELEMETRY, wire.telemetry("curve-test"))
            seq += 1
            time.sleep(0.02)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        rc = main(["overlay", "--connect", pub.bound, "--duration", "1", "--fps", "10",
                   "--out", str(tmp_path / "o.mp4"), "--server-key",
                   str(keyring["server_pub"]), "--client-key", str(keyring["good"])])
    finally:
        stop.set()
        thread.join()
        pub.close()
    out = capsys.readouterr().out
    assert rc == 0
    summary = dict(kv.split("=", 1) for kv in out.strip().split("  "))
    print(f"\noverlay over CURVE: {summary}")
    assert int(summary["received"]) > 0 and int(summary["LIVE"]) > 0
    assert int(summary["malformed"]) == 0
