"""CURVE key files handled as ssh handles private keys, through the real ``hepascope``
command in a subprocess: a keys directory, allow-list or key file that other users can
write, a secret key they can read, a key another user owns, and an invalid Z85 key each end
the command with exit 2 and ONE line on stderr naming the file (and its mode), never a
traceback. The files are real and really chmod'ed/chown'ed; the checks read mode bits (the
tests run as root, for whom ``access()`` says yes to everything)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.models import make_classifier

from hepascope.stream.security import (
    KeyFormatError,
    KeyPermissionError,
    load_public_key,
    load_secret_key,
    write_keypair,
)

CLI = [sys.executable, "-m", "hepascope.cli"]
NOBODY = 65534


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classifier(tmp_path_factory.mktemp("model") / "m.onnx")


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    """A publisher keys dir (server pair + clients/overlay.key) and the overlay's pair."""
    server = tmp_path / "srv"
    server_pub, server_sec = write_keypair(server, "server")
    ov_pub, ov_sec = write_keypair(tmp_path / "ov", "overlay")
    (server / "clients").mkdir(mode=0o755)
    allowed = server / "clients" / "overlay.key"
    allowed.write_bytes(ov_pub.read_bytes())
    allowed.chmod(0o644)
    return {"dir": server, "clients": server / "clients", "allowed": allowed,
            "server_pub": server_pub, "server_sec": server_sec, "ov_dir": tmp_path / "ov",
            "ov_pub": ov_pub, "ov_sec": ov_sec}


def _edit_key(path: Path, field: str, value: Callable[[str], str]) -> None:
    """Rewrite the quoted value of ``field`` ('public-key'/'secret-key') in a key file."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        name, sep, rest = line.partition("=")
        if sep and name.strip() == field:
            lines[i] = f'{name}= "{value(rest.strip().strip(chr(34)))}"'
    mode = path.stat().st_mode
    path.write_text("\n".join(lines) + "\n")
    path.chmod(mode)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The failure was exit 2 with exactly one line on stderr and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-500:]}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# (case id, what to break, the file the line must name, text the line must hold)
RUN_CASES: list[tuple[str, Callable[[dict[str, Path]], object], str, str]] = [
    ("keys dir 0777", lambda k: k["dir"].chmod(0o777), "dir", "0777"),
    ("keys dir group-writable 0775", lambda k: k["dir"].chmod(0o775), "dir", "0775"),
    ("allow-list dir others-writable 0757", lambda k: k["clients"].chmod(0o757), "clients",
     "0757"),
    ("allow-listed key 0666", lambda k: k["allowed"].chmod(0o666), "allowed", "0666"),
    ("secret key 0644", lambda k: k["server_sec"].chmod(0o644), "server_sec", "0644"),
    ("secret key group-readable 0640", lambda k: k["server_sec"].chmod(0o640), "server_sec",
     "0640"),
    ("secret key owned by nobody", lambda k: os.chown(k["server_sec"], NOBODY, -1),
     "server_sec", f"uid {NOBODY}"),
    ("secret key bad Z85 character", lambda k: _edit_key(
        k["server_sec"], "secret-key", lambda v: "~" + v[1:]), "server_sec", "'~'"),
    ("secret key 39 characters", lambda k: _edit_key(
        k["server_sec"], "secret-key", lambda v: v[1:]), "server_sec", "39 characters"),
    ("secret key 5-char group over 32 bits", lambda k: _edit_key(
        k["server_sec"], "secret-key", lambda v: "%%%%%" + v[5:]), "server_sec", "32 bits"),
    ("public key file as the secret one", lambda k: k["server_sec"].write_bytes(
        k["server_pub"].read_bytes()), "server_sec", "public key"),
    ("allow-listed key bad Z85 character", lambda k: _edit_key(
        k["allowed"], "public-key", lambda v: v[:-1] + "\\"), "allowed", "'\\\\'"),
]


def _run(model: Path, keys_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "run", "--source", "phantom:0", "--model", str(model),
                           "--duration", "0.3", "--publish", "tcp://0.0.0.0:0",
                           "--keys", str(keys_dir)],
                          capture_output=True, text=True, timeout=120)


def test_run_accepts_well_kept_keys(model: Path, keys: dict[str, Path]) -> None:
    """The control: the same files, untouched, run (so the refusals below mean something)."""
    proc = _run(model, keys["dir"])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_refuses_an_unsafe_or_invalid_key(
        model: Path, keys: dict[str, Path],
        case: tuple[str, Callable[[dict[str, Path]], object], str, str]) -> None:
    name, breakit, which, text = case
    breakit(keys)
    line = _one_line_error(_run(model, keys["dir"]))
    print(f"\n{name}: {line}")
    assert str(keys[which]) in line and text in line


OVERLAY_CASES: list[tuple[str, Callable[[dict[str, Path]], object], str, str]] = [
    ("client secret 0644", lambda k: k["ov_sec"].chmod(0o644), "ov_sec", "0644"),
    ("client secret others-writable 0602", lambda k: k["ov_sec"].chmod(0o602), "ov_sec",
     "0602"),
    ("client keys dir 0777", lambda k: k["ov_dir"].chmod(0o777), "ov_dir", "0777"),
    ("pinned server key writable 0646", lambda k: k["server_pub"].chmod(0o646), "server_pub",
     "0646"),
    ("pinned server key bad Z85 character", lambda k: _edit_key(
        k["server_pub"], "public-key", lambda v: "~" + v[1:]), "server_pub", "'~'"),
    ("public key file as the client secret", lambda k: k["ov_sec"].write_bytes(
        k["ov_pub"].read_bytes()), "ov_sec", "public key"),
]


def _overlay(keys: dict[str, Path], out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "overlay", "--connect", "tcp://127.0.0.1:9", "--duration",
                           "0.2", "--out", str(out), "--server-key", str(keys["server_pub"]),
                           "--client-key", str(keys["ov_sec"])],
                          capture_output=True, text=True, timeout=120)


def test_overlay_accepts_well_kept_keys(keys: dict[str, Path], tmp_path: Path) -> None:
    proc = _overlay(keys, tmp_path / "o.mp4")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case", OVERLAY_CASES, ids=[c[0] for c in OVERLAY_CASES])
def test_overlay_refuses_an_unsafe_or_invalid_key(
        keys: dict[str, Path], tmp_path: Path,
        case: tuple[str, Callable[[dict[str, Path]], object], str, str]) -> None:
    name, breakit, which, text = case
    breakit(keys)
    line = _one_line_error(_overlay(keys, tmp_path / "o.mp4"))
    print(f"\n{name}: {line}")
    assert str(keys[which]) in line and text in line


def test_key_errors_are_typed(keys: dict[str, Path]) -> None:
    """In process: a too-open key is a PermissionError, a malformed one a ValueError (both
    HepascopeErrors the CLI prints as one line)."""
    keys["server_sec"].chmod(0o604)
    with pytest.raises(KeyPermissionError) as perm:
        load_secret_key(keys["server_sec"])
    assert isinstance(perm.value, PermissionError) and "0604" in str(perm.value)
    keys["server_sec"].chmod(0o600)
    _edit_key(keys["server_pub"], "public-key", lambda v: v + "0")
    with pytest.raises(KeyFormatError) as fmt:
        load_public_key(keys["server_pub"])
    assert isinstance(fmt.value, ValueError) and "41 characters" in str(fmt.value)


def test_keys_command_makes_a_private_directory(tmp_path: Path) -> None:
    """``hepascope keys`` creates its directory 0700 (what the checks then accept),
    whatever the umask, and refuses to write into a directory others can write."""
    old = os.umask(0o002)
    try:
        write_keypair(tmp_path / "k", "server")
    finally:
        os.umask(old)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(KeyPermissionError, match="0777"):
        write_keypair(shared, "server")
    assert not any(shared.iterdir())
