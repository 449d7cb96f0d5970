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
import uuid
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError, IntegrityError, MissingDependencyError

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


def key_paths(out: Path | None) -> tuple[Path, Path]:
    """``-o DIR`` (an existing folder) or ``-o PREFIX``: the private and public key's paths."""
    prefix = Path(DEFAULT_PREFIX) if out is None else (out / DEFAULT_PREFIX if out.is_dir() else out)
    return prefix.with_name(prefix.name + PRIVATE_SUFFIX), prefix.with_name(prefix.name + PUBLIC_SUFFIX)


def keygen(out: Path | None = None, force: bool = False) -> tuple[Path, Path]:
    """A new Ed25519 key pair; the private key is readable by its owner only. An existing key is
    never overwritten without ``force`` (a lost signing key cannot be recovered)."""
    serialization, ed25519 = _crypto()
    private, public = key_paths(out)
    if not force and (private.exists() or public.exists()):
        raise ConfigError(f"{private} or {public} exists; choose another -o, or pass --force to replace the pair")
    if not private.parent.is_dir():
        raise ConfigError(f"{private.parent} is not a folder; create it or choose another -o")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write(private, pem, 0o600)
    _write(public, pub, 0o644)
    return private, public


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def sign(bundle: Path, key_path: Path) -> Path:
    """Sign the bundle's SHA-256 digest; returns ``<bundle>.sig``."""
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
    out = signature_path(bundle)
    _write(out, key.sign(digest(bundle)), 0o644)
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
