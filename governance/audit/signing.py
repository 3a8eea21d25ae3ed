"""Ed25519 keys that sign the audit log's checkpoints and export trailers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from governance.audit.store import Checkpoint


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key (first 16 hex digits of the SHA-256 of its raw bytes)."""
    return hashlib.sha256(public_bytes(public)).hexdigest()[:16]


def public_bytes(public: Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of a public key."""
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_pem(public: Ed25519PublicKey) -> str:
    """A public key as PEM text."""
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_pem(text: str | bytes) -> Ed25519PublicKey:
    """Read a PEM public key.

    Raises:
        ValueError: Not an Ed25519 public key.
    """
    key = serialization.load_pem_public_key(text.encode() if isinstance(text, str) else text)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


class CheckpointSigner:
    """Signs checkpoints with a private key kept in a file (created on first use with mode 0600).

    Args:
        path: PEM file of the private key.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self._create()
        key = serialization.load_pem_private_key(self.path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{self.path} is not an Ed25519 private key")
        self._key = key
        self.public = self._key.public_key()
        self.key_id = key_id(self.public)

    def _create(self) -> None:
        """Write a new key, published whole: replicas starting together must all end up with the same key."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path)  # atomic and never replaces: the first writer's key wins
        finally:
            tmp.unlink(missing_ok=True)

    def sign_bytes(self, message: bytes) -> str:
        """Base64 signature of ``message``."""
        return base64.b64encode(self._key.sign(message)).decode()

    def __call__(self, seq: int, digest: str, ts: float) -> Checkpoint:
        """Sign a checkpoint for record ``seq`` with hash ``digest``."""
        unsigned = Checkpoint(seq, digest, round(ts, 6), self.key_id, "")
        return Checkpoint(seq, digest, unsigned.ts, self.key_id, self.sign_bytes(unsigned.message()))


def signature_ok(public: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    """Whether a base64 signature over ``message`` verifies with ``public``."""
    try:
        public.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True
