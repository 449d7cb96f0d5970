"""Ed25519 signing keys and bundle signatures (``cryptography``, the ``ship`` extra).

A signature is Ed25519 over the bundle's SHA-256 digest (32 raw bytes), written beside it as
``<bundle>.sig``: the 64 raw signature bytes, so that OpenSSL verifies it without kiln::

    sha256sum bundle.tar.gz | cut -d' ' -f1 | xxd -r -p > digest.bin
    openssl pkeyutl -verify -pubin -inkey kiln-signing.pub -rawin -in digest.bin -sigfile bundle.tar.gz.sig

Keys are PEM: the private key PKCS#8 (written 0600; encrypted keys are read with the password in
``KILN_KEY_PASSWORD``), the public key SubjectPublicKeyInfo. Ed25519 signatures are
deterministic, so re-signing the same bundle gives the same ``.sig``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError, IntegrityError, MissingDependencyError
from kiln.ship.files import make_dirs, remove_made, write_temp

PRIVATE_SUFFIX, PUBLIC_SUFFIX = ".pem", ".pub"
DEFAULT_PREFIX = "kiln-signing"
PASSWORD_ENV = "KILN_KEY_PASSWORD"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as err:
        raise MissingDependencyError(
            "signing needs the Python package 'cryptography' (pip install 'kiln[ship]' -c constraints.txt)"
        ) from err
    return serialization, ed25519


def key_paths(out: str | Path | None) -> tuple[Path, Path]:
    """``-o DIR/`` (a trailing slash) or an existing folder: ``DIR/kiln-signing.pem`` and ``.pub``;
    ``-o PREFIX``: ``PREFIX.pem`` and ``PREFIX.pub``."""
    text = DEFAULT_PREFIX if out is None else os.fspath(out)
    prefix = Path(text) / DEFAULT_PREFIX if names_folder(text) else Path(text)
    return prefix.with_name(prefix.name + PRIVATE_SUFFIX), prefix.with_name(prefix.name + PUBLIC_SUFFIX)


def names_folder(text: str) -> bool:
    """``-o`` names a folder: it ends with a slash, or is one."""
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def keygen(out: str | Path | None = None, force: bool = False) -> tuple[Path, Path]:
    """A new Ed25519 key pair; the private key is readable by its owner only. An existing key is
    never overwritten without ``force`` (a lost signing key cannot be recovered). ``-o DIR/`` makes
    the folder; both files are renamed into place together at the end, so a failure leaves none."""
    serialization, ed25519 = _crypto()
    private, public = key_paths(out)
    if not force and (private.exists() or public.exists()):
        raise ConfigError(f"{private} or {public} exists; choose another -o, or pass --force to replace the pair")
    folder = private.parent
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder; choose another -o")
    if not folder.exists() and not (out is not None and names_folder(os.fspath(out))):
        raise ConfigError(f"{folder} does not exist; create it, or pass -o {folder}/ (a folder, which kiln creates)")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    made = make_dirs(folder)
    temps: list[Path] = []
    try:
        temps.append(write_temp(private, pem, 0o600))
        temps.append(write_temp(public, pub, 0o644))
        os.replace(temps[0], private)
        os.replace(temps[1], public)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        remove_made(made)
        raise
    return private, public


def digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def load_private_key(key_path: Path) -> Any:
    """The Ed25519 private key in ``key_path`` (read before anything is written), or one line."""
    serialization, ed25519 = _crypto()
    try:
        data = key_path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the signing key {key_path}: {err.strerror}; make one with kiln keygen") from err
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(data, password=password.encode() if password else None)
    except TypeError as err:
        raise ConfigError(f"{key_path} is encrypted; set {PASSWORD_ENV} to its password") from err
    except ValueError as err:
        raise ConfigError(
            f"{key_path} is not a PEM private key (or {PASSWORD_ENV} is wrong); pass the .pem kiln keygen wrote"
        ) from err
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{key_path} is a {type(key).__name__}, not an Ed25519 key; make one with kiln keygen")
    return key


def signature_bytes(key: Any, bundle: Path) -> bytes:
    """The 64-byte Ed25519 signature of ``bundle``'s SHA-256 digest."""
    return key.sign(digest(bundle))


def sign(bundle: Path, key_path: Path) -> Path:
    """Sign the bundle's SHA-256 digest; returns ``<bundle>.sig`` (written atomically)."""
    key = load_private_key(key_path)
    out = signature_path(bundle)
    os.replace(write_temp(out, signature_bytes(key, bundle), 0o644), out)
    return out


def signature_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".sig")


def verify_signature(bundle: Path, pubkey: Path) -> None:
    """The bundle's ``.sig`` verifies with ``pubkey``, or an ``IntegrityError`` (exit 7)."""
    serialization, ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    try:
        key = serialization.load_pem_public_key(pubkey.read_bytes())
    except OSError as err:
        raise ConfigError(f"cannot read the public key {pubkey}: {err.strerror}") from err
    except ValueError as err:
        raise ConfigError(f"{pubkey} is not a PEM public key; pass the .pub kiln keygen wrote") from err
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{pubkey} is a {type(key).__name__}, not an Ed25519 public key")
    sig = signature_path(bundle)
    if not sig.is_file():
        raise IntegrityError(
            f"{bundle} has no signature ({sig.name} is missing) and --pubkey asks for one; "
            "fetch the .sig with the bundle, or package it again with --sign"
        )
    try:
        key.verify(sig.read_bytes(), digest(bundle))
    except InvalidSignature as err:
        raise IntegrityError(
            f"{sig.name} does not verify {bundle.name} with {pubkey.name}: the bundle or its signature was changed "
            "after signing, or it was signed with another key; do not run it"
        ) from err
