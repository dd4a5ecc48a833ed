"""The bundle's detached digest (bundle.sig) and the site's keyed signatures over it.

Stdlib only, plus the optional `cryptography` package for Ed25519 (docs/bundle.md has the
written specification):

    bundle.sig      canonical JSON: the SHA-256 of every other file in the bundle directory
                    (manifest.json included), the digest over that list, an optional
                    signature (HMAC-SHA256 or Ed25519) of the digest, and a check of itself

The digest is the SHA-256 of the `sha256sum` listing of the covered files, sorted by name
(`<hex>  <name>\\n` per file), so `sha256sum manifest.json model.tflite probe.json | sha256sum`
in the bundle directory reproduces it. A signature is made over the ASCII message
`phosphene-bundle-digest:sha256:<digest>`.

`seal_bundle(dir)` writes bundle.sig (quantize does, before its atomic rename);
`check_seal(dir, key=, pin=)` is what `load_bundle` runs; `sign_bundle(dir, key)` adds or
replaces the signature; `load_key` / `generate_key` read and make key files. The `keygen`
and `sign` commands are at the end.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import click

from phosphene.edge.bundle import DIGEST_FILE, MANIFEST_FILE, BundleError, file_sha256
from phosphene.io import atomic_path

__all__ = [
    "DIGEST_ALGORITHM",
    "DIGEST_FORMAT",
    "DIGEST_VERSION",
    "ED25519",
    "ED25519_PRIVATE_FILE",
    "ED25519_PUBLIC_FILE",
    "HMAC_KEY_FILE",
    "HMAC_SHA256",
    "KEY_ENV",
    "PIN_ENV",
    "BundleKey",
    "KeyFileError",
    "Seal",
    "Signature",
    "check_seal",
    "digest_of",
    "generate_key",
    "keygen",
    "load_key",
    "normalise_pin",
    "read_seal",
    "seal_bundle",
    "sign",
    "sign_bundle",
    "signed_message",
]

DIGEST_FORMAT = "phosphene-bundle-digest"
DIGEST_VERSION = 1
DIGEST_ALGORITHM = "sha256"
HMAC_SHA256 = "hmac-sha256"
ED25519 = "ed25519"
KEY_ENV = "PHOSPHENE_BUNDLE_KEY"  # the key file `run`, `bench` and `verify` require a signature by
PIN_ENV = "PHOSPHENE_BUNDLE_PIN"  # the digest they require
HMAC_KEY_FILE = "bundle-hmac.key"
ED25519_PRIVATE_FILE = "bundle-ed25519.key"
ED25519_PUBLIC_FILE = "bundle-ed25519.pub"

_HMAC_HEADER = "phosphene-hmac-sha256"
_SIGNED_PREFIX = b"phosphene-bundle-digest:sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SIGNATURE_HEX = {HMAC_SHA256: 64, ED25519: 128}
_FIELDS = {"format", "version", "algorithm", "files", "digest", "signature", "check"}
_READ_WHOLE = ".json"  # files read once: the bytes hashed are the bytes the loader parses
_NEEDS_CRYPTOGRAPHY = ("Ed25519 keys need the `cryptography` package: "
                       "pip install 'phosphene[edge]' (or use an HMAC key: keygen --type hmac)")


class KeyFileError(BundleError):
    """A key file is missing, unreadable, of an unknown kind or unusable for what was asked."""


# --------------------------------------------------------------------------------------
# The digest file
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    """A signature of a bundle digest: algorithm, the signing key's id, the value (hex)."""

    algorithm: str  # "hmac-sha256" or "ed25519"
    key_id: str  # 16 hex digits (see BundleKey.key_id)
    value: str  # hex: 32 bytes (HMAC-SHA256) or 64 bytes (Ed25519)

    def to_dict(self) -> dict:
        return {"algorithm": self.algorithm, "key_id": self.key_id, "value": self.value}


@dataclass(frozen=True)
class Seal:
    """What bundle.sig holds, and which key verified its signature during this load."""

    digest: str  # hex SHA-256 over the sorted file list
    files: dict[str, str]  # name -> hex SHA-256, every file of the bundle but bundle.sig
    signature: Signature | None = None
    verified_key_id: str | None = None  # set by check_seal(key=...) once the signature verified

    def to_json(self) -> dict:
        """The bundle.sig object, `check` included."""
        obj = {"format": DIGEST_FORMAT, "version": DIGEST_VERSION, "algorithm": DIGEST_ALGORITHM,
               "files": dict(sorted(self.files.items())), "digest": self.digest,
               "signature": None if self.signature is None else self.signature.to_dict()}
        obj["check"] = _sha256(_canonical(obj))
        return obj

    def summary(self) -> dict:
        """JSON-ready: digest, and signature algorithm / key id / whether it was verified."""
        sig = None
        if self.signature is not None:
            sig = {"algorithm": self.signature.algorithm, "key_id": self.signature.key_id,
                   "verified": self.verified_key_id == self.signature.key_id}
        return {"algorithm": DIGEST_ALGORITHM, "digest": self.digest, "signature": sig}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")


def digest_of(files: Mapping[str, str]) -> str:
    """The bundle digest: SHA-256 of the sorted `sha256sum` listing `<hex>  <name>\\n`."""
    listing = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    return _sha256(listing.encode("utf-8"))


def signed_message(digest: str) -> bytes:
    """The bytes a signature is made over: b'phosphene-bundle-digest:sha256:' + hex digest."""
    return _SIGNED_PREFIX + digest.encode("ascii")


def normalise_pin(pin: str) -> str:
    """'sha256:ABC...' or 'abc...' -> 64 lowercase hex digits; raises BundleError otherwise."""
    text = str(pin).strip().lower().removeprefix(f"{DIGEST_ALGORITHM}:")
    if not _HEX64.fullmatch(text):
        raise BundleError(f"a pinned bundle digest is 64 hex digits (as `phosphene verify` "
                          f"prints it), got {pin!r}")
    return text


def _check_name(name: object, where: str) -> str:
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\\" in name or "\n" in name or "\0" in name or name == DIGEST_FILE):
        raise BundleError(f"{where}: {name!r} is not a plain file name inside the bundle")
    return name


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError as exc:
        raise BundleError(f"cannot list the bundle {directory}: {exc.strerror or exc}") from None


def _hash_file(file: Path, contents: dict[str, bytes] | None) -> str:
    if file.suffix == _READ_WHOLE:
        data = file.read_bytes()
        if contents is not None:
            contents[file.name] = data
        return _sha256(data)
    return file_sha256(file)


def seal_bundle(directory: str | os.PathLike) -> Seal:
    """Hash every file in `directory` (manifest.json included) and write bundle.sig, unsigned.

    Any existing bundle.sig, with its signature, is replaced. Raises BundleError when the
    directory has no manifest.json or holds anything but plain files.
    """
    directory = Path(directory)
    if not (directory / MANIFEST_FILE).is_file():
        raise BundleError(f"{directory} has no {MANIFEST_FILE}: not a phosphene bundle")
    files: dict[str, str] = {}
    for entry in _entries(directory):
        if entry.name == DIGEST_FILE:
            continue
        _check_name(entry.name, str(directory))
        if not entry.is_file():
            raise BundleError(f"{entry} is not a plain file: a bundle holds files only")
        files[entry.name] = _hash_file(entry, None)
    seal = Seal(digest=digest_of(files), files=files)
    write_seal(directory, seal)
    return seal


def write_seal(directory: str | os.PathLike, seal: Seal) -> None:
    """Write `seal` as `directory`/bundle.sig, atomically (rename of a complete file)."""
    with atomic_path(Path(directory) / DIGEST_FILE) as tmp:
        tmp.write_bytes(_canonical(seal.to_json()))
        os.chmod(tmp, 0o644)  # not secret: readable like the rest of the bundle


def read_seal(directory: str | os.PathLike) -> Seal:
    """Parse bundle.sig and check it against itself (no file is hashed); raises BundleError.

    Refuses a file that is not byte for byte as written (canonical JSON), whose `check`
    or digest disagrees with its content, or whose format version is newer than this code.
    """
    directory = Path(directory)
    file = directory / DIGEST_FILE
    where = f"bundle file {DIGEST_FILE}"
    bad = f"{where} is corrupted or was edited"
    again = "copy the bundle again, or rebuild it with `phosphene quantize`"
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{where} is missing from {directory}: {again}") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{bad} (not valid JSON: {exc}): {again}") from None
    if not isinstance(obj, dict) or obj.get("format") != DIGEST_FORMAT:
        raise BundleError(f"{bad} (not a {DIGEST_FORMAT} file): {again}")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{bad} (no valid format version): {again}")
    if version > DIGEST_VERSION:
        raise BundleError(f"{where} has digest format version {version}, newer than this "
                          f"phosphene reads ({DIGEST_VERSION}): upgrade phosphene on this device")
    if raw != _canonical(obj):
        raise BundleError(f"{bad} (not byte for byte as phosphene wrote it): {again}")
    if set(obj) != _FIELDS:
        raise BundleError(f"{bad} (fields {sorted(obj)}, expected {sorted(_FIELDS)}): {again}")
    body = {k: v for k, v in obj.items() if k != "check"}
    if obj["check"] != _sha256(_canonical(body)):
        raise BundleError(f"{bad} (its check does not match its content): {again}")
    if obj["algorithm"] != DIGEST_ALGORITHM:
        raise BundleError(f"{where}: digest algorithm {obj['algorithm']!r} is not "
                          f"{DIGEST_ALGORITHM!r}: {again}")
    files = obj["files"]
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{bad} (no file list): {again}")
    for name, h in files.items():
        _check_name(name, where)
        if not isinstance(h, str) or not _HEX64.fullmatch(h):
            raise BundleError(f"{bad} (no valid SHA-256 for {name}): {again}")
    digest = obj["digest"]
    if not isinstance(digest, str) or digest != digest_of(files):
        raise BundleError(f"{bad} (its digest does not match its file list): {again}")
    return Seal(digest=digest, files=dict(files), signature=_parse_signature(obj["signature"], bad))


def _parse_signature(sig: object, bad: str) -> Signature | None:
    if sig is None:
        return None
    if not isinstance(sig, dict) or set(sig) != {"algorithm", "key_id", "value"}:
        raise BundleError(f"{bad} (malformed signature): sign the bundle again")
    algorithm, key_id, value = sig["algorithm"], sig["key_id"], sig["value"]
    if algorithm not in _SIGNATURE_HEX:
        raise BundleError(f"{bad} (unknown signature algorithm {algorithm!r}, this phosphene "
                          f"knows {', '.join(_SIGNATURE_HEX)})")
    if (not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id) or not isinstance(value, str)
            or len(value) != _SIGNATURE_HEX[algorithm] or not re.fullmatch(r"[0-9a-f]+", value)):
        raise BundleError(f"{bad} (malformed {algorithm} signature): sign the bundle again")
    return Signature(algorithm=algorithm, key_id=key_id, value=value)


def check_seal(directory: str | os.PathLike, *, key: str | os.PathLike | BundleKey | None = None,
               pin: str | None = None, contents: dict[str, bytes] | None = None) -> Seal:
    """Verify a bundle directory against its bundle.sig; raise BundleError naming the file.

    In order: bundle.sig parses and checks against itself; the digest equals `pin`, if
    given; the signature verifies with `key` (a key file or BundleKey), if given; the
    directory holds exactly the files bundle.sig lists; each file has its recorded SHA-256
    (each hashed once). JSON files are read whole into `contents` (name -> bytes) when it
    is given, so the caller parses the very bytes that were hashed.
    """
    directory = Path(directory)
    seal = read_seal(directory)
    if pin is not None and seal.digest != normalise_pin(pin):
        raise BundleError(f"the bundle's digest {seal.digest} is not the pinned "
                          f"{normalise_pin(pin)}: this is not the approved bundle")
    if key is not None:
        seal = _verify_signature(seal, key if isinstance(key, BundleKey) else load_key(key))
    present = {e.name: e for e in _entries(directory) if e.name != DIGEST_FILE}
    for name in sorted(seal.files):
        if name not in present:
            raise BundleError(f"bundle file {name} is missing from {directory}")
    extra = sorted(set(present) - set(seal.files))
    if extra:
        raise BundleError(f"bundle file {extra[0]} is not covered by {DIGEST_FILE} (added after "
                          f"the bundle was sealed): remove it, or rebuild the bundle with "
                          f"`phosphene quantize`")
    for name in sorted(seal.files, key=lambda n: (n != MANIFEST_FILE, n)):
        file = present[name]
        if not file.is_file():
            raise BundleError(f"bundle file {name} is not a plain file")
        if _hash_file(file, contents) != seal.files[name]:
            raise BundleError(f"bundle file {name} does not match its SHA-256 in {DIGEST_FILE} "
                              "(corrupted or modified): copy the bundle again")
    return seal


def _verify_signature(seal: Seal, key: BundleKey) -> Seal:
    where = f"bundle file {DIGEST_FILE}"
    sig = seal.signature
    if sig is None:
        raise BundleError(f"the bundle is not signed, but a signature by {key.algorithm} key "
                          f"{key.key_id} is required: sign it with `phosphene sign`")
    if sig.algorithm != key.algorithm or sig.key_id != key.key_id:
        raise BundleError(f"{where}: the bundle is signed by {sig.algorithm} key {sig.key_id}, "
                          f"not by the required {key.algorithm} key {key.key_id}")
    if not key.verifies(seal.digest, sig):
        raise BundleError(f"{where}: the {sig.algorithm} signature by key {sig.key_id} does not "
                          "verify (the bundle or its digest was modified after signing)")
    return replace(seal, verified_key_id=key.key_id)


# --------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleKey:
    """A key to sign or verify bundle digests: an HMAC site key or an Ed25519 key.

    HMAC keys and Ed25519 private keys sign and verify; an Ed25519 public key only verifies.
    Construct with `load_key(path)`.
    """

    algorithm: str  # "hmac-sha256" or "ed25519"
    key_id: str  # HMAC: SHA-256 of a label and the key; Ed25519: SHA-256 of the raw public key
    path: Path | None = None
    private: bool = False  # it can sign
    _secret: bytes | None = field(default=None, repr=False, compare=False)  # HMAC
    _ed25519_private: object = field(default=None, repr=False, compare=False)
    _ed25519_public: object = field(default=None, repr=False, compare=False)

    def sign(self, digest: str) -> Signature:
        """Sign a bundle digest; raises KeyFileError for a public key."""
        if not self.private:
            raise _public_only(self)
        message = signed_message(digest)
        if self.algorithm == HMAC_SHA256:
            value = hmac.new(self._secret, message, hashlib.sha256).hexdigest()
        else:
            value = self._ed25519_private.sign(message).hex()
        return Signature(algorithm=self.algorithm, key_id=self.key_id, value=value)

    def verifies(self, digest: str, signature: Signature) -> bool:
        """Whether `signature` is this key's signature of `digest`."""
        if signature.algorithm != self.algorithm or signature.key_id != self.key_id:
            return False
        message = signed_message(digest)
        if self.algorithm == HMAC_SHA256:
            expected = hmac.new(self._secret, message, hashlib.sha256).hexdigest()
            return hmac.compare_digest(expected, signature.value)
        from cryptography.exceptions import InvalidSignature

        try:
            self._ed25519_public.verify(bytes.fromhex(signature.value), message)
        except (InvalidSignature, ValueError):
            return False
        return True


def _public_only(key: BundleKey) -> KeyFileError:
    return KeyFileError(f"{key.path} is an Ed25519 public key, which only verifies: sign with "
                        f"the private key ({ED25519_PRIVATE_FILE})")


def _hmac_key(secret: bytes, path: Path | None) -> BundleKey:
    key_id = _sha256(b"phosphene-hmac-key-id:" + secret)[:16]
    return BundleKey(algorithm=HMAC_SHA256, key_id=key_id, path=path, private=True, _secret=secret)


def _ed25519_key(private, public, path: Path | None) -> BundleKey:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return BundleKey(algorithm=ED25519, key_id=_sha256(raw)[:16], path=path,
                     private=private is not None, _ed25519_private=private, _ed25519_public=public)


def _cryptography(path: Path | None):
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        where = f"{path}: " if path is not None else ""
        raise KeyFileError(where + _NEEDS_CRYPTOGRAPHY) from None
    return serialization


def load_key(path: str | os.PathLike) -> BundleKey:
    """Read a key file: an HMAC key (`phosphene-hmac-sha256 <hex>`) or an Ed25519 PEM key.

    Ed25519 private keys are PKCS#8 PEM (`phosphene keygen` or `openssl genpkey -algorithm
    ed25519`), public keys SubjectPublicKeyInfo PEM; both need `cryptography`. Raises
    KeyFileError naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file not found: {path}") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path} is a directory, not a key file") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    text = data.decode("ascii", errors="replace").strip()
    if text.startswith(_HMAC_HEADER):
        parts = text.split()
        try:
            secret = bytes.fromhex(parts[1]) if len(parts) == 2 else b""
        except ValueError:
            secret = b""
        if len(secret) < 32:
            raise KeyFileError(f"{path} is not a valid HMAC key file: expected "
                               f"'{_HMAC_HEADER} <at least 64 hex digits>'")
        return _hmac_key(secret, path)
    if text.startswith(("-----BEGIN PRIVATE KEY-----", "-----BEGIN PUBLIC KEY-----")):
        serialization = _cryptography(path)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (
            Ed25519PrivateKey,
            Ed25519PublicKey,
        )

        try:
            if "PRIVATE" in text.splitlines()[0]:
                private = serialization.load_pem_private_key(data, password=None)
                public = private.public_key() if isinstance(private, Ed25519PrivateKey) else None
            else:
                private, public = None, serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path} is not a usable PEM key ({exc})") from None
        if not isinstance(public, Ed25519PublicKey):
            raise KeyFileError(f"{path} is a PEM key but not an Ed25519 one: phosphene signs "
                               "bundles with Ed25519 or HMAC-SHA256 keys")
        return _ed25519_key(private, public, path)
    if text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----"):
        raise KeyFileError(f"{path} is an encrypted private key: phosphene reads unencrypted "
                           "PKCS#8 keys (keep the file 0600 on the workstation)")
    raise KeyFileError(f"{path} is not a phosphene key file (an HMAC key or an Ed25519 PEM key "
                       "from `phosphene keygen`)")


def _write_key(path: Path, data: bytes, mode: int) -> None:
    with atomic_path(path) as tmp:  # mkstemp: the temporary file is 0600 from the start
        os.chmod(tmp, mode)
        tmp.write_bytes(data)


def generate_key(out_dir: str | os.PathLike, algorithm: str = ED25519, *,
                 overwrite: bool = False) -> tuple[BundleKey, dict[str, Path]]:
    """Make a signing key in `out_dir` (created 0700 if new): an Ed25519 pair or an HMAC key.

    Private keys are written 0600, public keys 0644, each atomically. Returns (the key,
    {"private": path, "public": path} or {"private": path} for HMAC). Refuses to replace
    an existing key file unless `overwrite`.
    """
    out_dir = Path(out_dir)
    if algorithm in (HMAC_SHA256, "hmac"):
        paths = {"private": out_dir / HMAC_KEY_FILE}
    elif algorithm == ED25519:
        paths = {"private": out_dir / ED25519_PRIVATE_FILE, "public": out_dir / ED25519_PUBLIC_FILE}
    else:
        raise KeyFileError(f"unknown key type {algorithm!r}: use {ED25519} or hmac")
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise KeyFileError(f"{existing[0]} already exists (pass --overwrite to replace it; a "
                           "replaced key no longer verifies the bundles it signed)")
    if out_dir.exists() and not out_dir.is_dir():
        raise KeyFileError(f"{out_dir} exists and is not a directory")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if algorithm == ED25519:
        serialization = _cryptography(None)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = Ed25519PrivateKey.generate()
        _write_key(paths["private"], private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)
        _write_key(paths["public"], private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
        key = _ed25519_key(private, private.public_key(), paths["private"])
    else:
        secret = secrets.token_bytes(32)
        _write_key(paths["private"], f"{_HMAC_HEADER} {secret.hex()}\n".encode("ascii"), 0o600)
        key = _hmac_key(secret, paths["private"])
    return key, paths


def sign_bundle(directory: str | os.PathLike, key: str | os.PathLike | BundleKey, *,
                pin: str | None = None) -> Seal:
    """Verify the bundle fully (load_bundle), then add or replace its signature, atomically.

    Only a bundle whose files match its bundle.sig is signed (and, with `pin`, only the
    pinned one): signing never re-seals modified files. Returns the new Seal.
    """
    from phosphene.edge.bundle import load_bundle

    key = key if isinstance(key, BundleKey) else load_key(key)
    if not key.private:
        raise _public_only(key)
    bundle = load_bundle(directory, pin=pin)
    seal = replace(bundle.seal, signature=key.sign(bundle.seal.digest), verified_key_id=None)
    write_seal(directory, seal)
    return seal


# --------------------------------------------------------------------------------------
# phosphene keygen / phosphene sign
# --------------------------------------------------------------------------------------
def _fail(exc: Exception) -> click.ClickException:
    if isinstance(exc, OSError):
        return click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    return click.ClickException(str(exc))


@click.command("keygen")
@click.option("--out", "out_dir", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=str),
              help="Directory for the key file(s) (created 0700).")
@click.option("--type", "algorithm", type=click.Choice([ED25519, "hmac"]), default=ED25519,
              show_default=True,
              help="ed25519: private key (workstation) + public key (board); hmac: one shared "
                   "site key on both.")
@click.option("--overwrite", is_flag=True, help="Replace existing key files.")
def keygen(out_dir, algorithm, overwrite):
    """Make a key for signing bundles: an Ed25519 pair or an HMAC site key.

    Writes DIR/bundle-ed25519.key (private, 0600) and DIR/bundle-ed25519.pub, or
    DIR/bundle-hmac.key (0600), each atomically, and prints the key id that `verify`
    shows for bundles it signed.

    \b
    Examples:
      phosphene keygen --out ~/.phosphene-keys
      phosphene sign bundle --key ~/.phosphene-keys/bundle-ed25519.key
      phosphene verify bundle --key bundle-ed25519.pub     # on the board
    """
    try:
        key, paths = generate_key(out_dir, algorithm, overwrite=overwrite)
    except (BundleError, OSError) as exc:
        raise _fail(exc) from None
    if algorithm == ED25519:
        click.echo(f"private key  {paths['private']}  (0600: keep it on the workstation, sign with it)")
        click.echo(f"public key   {paths['public']}  (copy it to the board: --key or {KEY_ENV})")
    else:
        click.echo(f"site key     {paths['private']}  (0600: secret, on the workstation and the board)")
    click.echo(f"key id       {key.key_id} ({key.algorithm})")


@click.command("sign")
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--key", "key_file", required=True, metavar="KEYFILE",
              help="Ed25519 private key or HMAC site key (from `phosphene keygen`).")
@click.option("--pin", metavar="DIGEST",
              help="Sign only if the bundle's digest is this one (as `phosphene verify` prints).")
def sign(bundle, key_file, pin):
    """Sign a bundle's digest with a site key (adds or replaces the signature in bundle.sig).

    Verifies the bundle first (every file against bundle.sig, the manifest, the probe) and
    signs only a bundle that is intact, then replaces bundle.sig atomically.

    \b
    Example:
      phosphene sign bundle --key ~/.phosphene-keys/bundle-ed25519.key
    """
    try:
        seal = sign_bundle(bundle, key_file, pin=pin)
    except (BundleError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    click.echo(f"signed {bundle}: digest {seal.digest}, {seal.signature.algorithm} key "
               f"{seal.signature.key_id}")
