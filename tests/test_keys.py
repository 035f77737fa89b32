"""keys.py: RFC 7748 test vectors, agreement with the `wg` binary, key files."""

import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from natgw import keys
from natgw.config import load_config

WG = shutil.which("wg") or "/usr/bin/wg"
needs_wg = pytest.mark.skipif(not shutil.which(WG), reason="wireguard-tools (wg) not installed")

# RFC 7748 section 5.2: (scalar, u-coordinate, output).
X25519_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]

# RFC 7748 section 6.1: private key -> public key.
ALICE = (
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
)
BOB = (
    "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
)
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def x25519(scalar: bytes, u: bytes) -> bytes:
    """X25519 of the library natgw's keys are derived with (cryptography, on OpenSSL)."""
    ours = X25519PrivateKey.from_private_bytes(scalar)
    return ours.exchange(X25519PublicKey.from_public_bytes(u))


# The scalar-multiplication vectors check the backend the installed `cryptography`
# was built against (Debian's may differ from PyPI's) clamps and masks as RFC 7748 says.
@pytest.mark.parametrize(("scalar", "u", "out"), X25519_VECTORS)
def test_x25519_rfc7748_vectors(scalar: str, u: str, out: str) -> None:
    assert x25519(bytes.fromhex(scalar), bytes.fromhex(u)).hex() == out


@pytest.mark.parametrize(
    ("iterations", "out"),
    [
        (1, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"),
        (1000, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"),
    ],
)
def test_x25519_rfc7748_iterated(iterations: int, out: str) -> None:
    k = u = (9).to_bytes(32, "little")
    for _ in range(iterations):
        k, u = x25519(k, u), k
    assert k.hex() == out


@pytest.mark.parametrize(("private", "public"), [ALICE, BOB])
def test_public_key_rfc7748_diffie_hellman(private: str, public: str) -> None:
    assert keys.public_key(bytes.fromhex(private)).hex() == public
    b64 = base64.b64encode(bytes.fromhex(private)).decode()
    assert keys.pubkey(b64) == base64.b64encode(bytes.fromhex(public)).decode()


def test_shared_secret_rfc7748() -> None:
    a, b = bytes.fromhex(ALICE[0]), bytes.fromhex(BOB[0])
    assert x25519(a, keys.public_key(b)).hex() == SHARED
    assert x25519(b, keys.public_key(a)).hex() == SHARED


def test_shared_secret_agrees_for_generated_keys() -> None:
    a, b = keys.new_private_key(), keys.new_private_key()
    assert x25519(a, keys.public_key(b)) == x25519(b, keys.public_key(a))


def test_public_key_wants_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        keys.public_key(bytes(31))


def test_genkey_is_clamped_and_random() -> None:
    made = {keys.genkey() for _ in range(8)}
    assert len(made) == 8
    for k in made:
        raw = keys.decode_key(k)
        assert raw == keys.clamp(raw)
        assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a WireGuard key: expected 44 base64 characters, got 0"),
        ("abc", "not a WireGuard key: expected 44 base64 characters, got 3"),
        ("A" * 43 + "=" + "A", "not a WireGuard key: expected 44 base64 characters, got 45"),
        ("!" * 43 + "=", "not a WireGuard key: invalid base64"),
        # 44 characters that are 31 bytes.
        (
            base64.b64encode(bytes(31)).decode(),
            "not a WireGuard key: decodes to 31 bytes, expected 32",
        ),
        # 'B' before '=' leaves a set bit in the unused low bits.
        ("A" * 42 + "B=", "not a WireGuard key: non-canonical base64 (unused bits are set)"),
        (None, "not a WireGuard key: expected a base64 string, got NoneType"),
    ],
)
def test_decode_key_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        keys.decode_key(text)
    assert str(e.value) == message


def test_decode_key_ignores_surrounding_whitespace() -> None:
    k = keys.genkey()
    assert keys.decode_key(f"  {k}\n") == base64.b64decode(k)


def _wg_pubkey(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WG, "pubkey"], input=text, capture_output=True, text=True, check=False)


@needs_wg
@pytest.mark.parametrize("attempt", range(5))
def test_pubkey_matches_wg(attempt: int) -> None:
    private = subprocess.run([WG, "genkey"], capture_output=True, text=True, check=True).stdout
    assert keys.pubkey(private) == _wg_pubkey(private).stdout.strip()
    ours = keys.genkey()
    assert keys.pubkey(ours) == _wg_pubkey(ours + "\n").stdout.strip()


@needs_wg
@pytest.mark.parametrize("text", ["abc", "!" * 43 + "=", "A" * 42 + "B=", "A" * 42 + "=="])
def test_wg_rejects_what_we_reject(text: str) -> None:
    with pytest.raises(ValueError):
        keys.pubkey(text)
    assert _wg_pubkey(text + "\n").returncode != 0


# -- key files -------------------------------------------------------------------


def test_write_private_key_is_0600_from_creation(tmp_path: Path, monkeypatch) -> None:
    # Watch the open(2) itself: a write-then-chmod would pass a check of the end result.
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, flags, mode=0o777: opened.append((flags, mode))
                        or real_open(p, flags, mode))
    path = tmp_path / "gw.key"
    k = keys.genkey()
    keys.write_private_key(path, k)
    ((flags, mode),) = opened
    assert flags & os.O_CREAT and flags & os.O_EXCL and mode == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == k + "\n"


def test_write_private_key_never_replaces_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.key"
    path.write_text("keep me\n")
    with pytest.raises(FileExistsError):
        keys.write_private_key(path, keys.genkey())
    assert path.read_text() == "keep me\n"
    # Nor follows a planted symlink to write elsewhere.
    target, link = tmp_path / "elsewhere", tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        keys.write_private_key(link, keys.genkey())
    assert not target.exists()


def test_write_private_key_refuses_a_non_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        keys.write_private_key(tmp_path / "gw.key", "hello")
    assert not (tmp_path / "gw.key").exists()


def test_written_key_file_is_accepted_as_it_is(tmp_path: Path) -> None:
    # No chmod needed after writing: the config loader takes the file as written.
    key = tmp_path / "gw.key"
    k = keys.genkey()
    keys.write_private_key(key, k)
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump({"name": "gw", "cidrs": ["10.244.0.0/16"],
                                      "privateKeyFile": "gw.key"}))
    assert load_config(config).public_key == keys.pubkey(k)
