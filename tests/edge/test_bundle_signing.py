"""bundle.sig: the detached digest over every file, HMAC / Ed25519 signatures, pins, keys.

Every bundle here is the tiny real bundle of conftest.py (sealed by the function quantize
uses), copied before a test damages it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from dataclasses import replace

import pytest
from click.testing import CliRunner

from phosphene.cli import cli
from phosphene.edge import signing
from phosphene.edge.bundle import (
    BUNDLE_VERSION,
    DIGEST_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PROBE_FILE,
    BundleError,
    load_bundle,
)
from phosphene.edge.signing import (
    KeyFileError,
    check_seal,
    generate_key,
    load_key,
    read_seal,
    seal_bundle,
    sign_bundle,
    write_seal,
)

ALL_FILES = (MANIFEST_FILE, MODEL_FILE, PROBE_FILE, DIGEST_FILE)
NO_ENV = {"PHOSPHENE_BUNDLE_KEY": "", "PHOSPHENE_BUNDLE_PIN": ""}  # a caller's settings never leak in


@pytest.fixture
def bundle(edge_bundle_path, tmp_path):
    """A private copy of the tiny sealed bundle."""
    dst = tmp_path / "bundle"
    shutil.copytree(edge_bundle_path, dst)
    return dst


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """{name: (BundleKey, paths)}: two Ed25519 pairs and two HMAC site keys."""
    root = tmp_path_factory.mktemp("keys")
    return {"ed": generate_key(root / "ed", "ed25519"), "ed2": generate_key(root / "ed2", "ed25519"),
            "hmac": generate_key(root / "hmac", "hmac"), "hmac2": generate_key(root / "hmac2", "hmac")}


def flip(file, i: int, mask: int = 0x01) -> None:
    data = bytearray(file.read_bytes())
    data[i] ^= mask
    file.write_bytes(bytes(data))


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env={**NO_ENV, **(env or {})})


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


# --------------------------------------------------------------------------------------
# The digest
# --------------------------------------------------------------------------------------
def test_the_seal_covers_every_file_and_is_sha256sum_reproducible(bundle):
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted(ALL_FILES)
    seal = read_seal(bundle)
    assert sorted(seal.files) == sorted([MANIFEST_FILE, MODEL_FILE, PROBE_FILE])
    for name, h in seal.files.items():
        assert h == hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    # `sha256sum manifest.json model.tflite probe.json | sha256sum` in the bundle directory
    listing = "".join(f"{seal.files[n]}  {n}\n" for n in sorted(seal.files))
    assert seal.digest == hashlib.sha256(listing.encode()).hexdigest()
    doc = json.loads((bundle / DIGEST_FILE).read_text())
    assert doc["format"] == "phosphene-bundle-digest" and doc["version"] == 1
    assert doc["algorithm"] == "sha256" and doc["signature"] is None
    assert stat.S_IMODE((bundle / DIGEST_FILE).stat().st_mode) == 0o644
    b = load_bundle(bundle)
    assert b.digest == seal.digest and b.seal.signature is None and b.version == BUNDLE_VERSION == 2
    # manifest.json's own list agrees with bundle.sig
    assert {n: m["sha256"] for n, m in b.manifest["files"].items()} == {
        n: seal.files[n] for n in (MODEL_FILE, PROBE_FILE)}


@pytest.mark.parametrize("name", [MANIFEST_FILE, MODEL_FILE, PROBE_FILE])
def test_flipping_any_byte_of_a_file_is_refused_naming_it(bundle, name):
    file = bundle / name
    size = file.stat().st_size
    positions = sorted({0, 1, size // 3, size // 2, size - 2, size - 1, *range(0, size, max(1, size // 25))})
    original = file.read_bytes()
    for i in positions:
        for mask in (0x01, 0x80):
            flip(file, i, mask)
            with pytest.raises(BundleError, match=rf"^bundle file {name} does not match its SHA-256 "
                                                  rf"in {DIGEST_FILE} \(corrupted or modified\)"):
                load_bundle(bundle)
            file.write_bytes(original)
    load_bundle(bundle)  # restored: loads again


@pytest.mark.parametrize("signed", [False, True])
def test_flipping_any_byte_of_the_digest_file_is_refused_naming_it(bundle, keys, signed):
    if signed:
        sign_bundle(bundle, keys["ed"][0])
    file = bundle / DIGEST_FILE
    original = file.read_bytes()
    for i in range(len(original)):  # every byte, no key given: the check alone catches it
        flip(file, i)
        with pytest.raises(BundleError, match=rf"bundle file {DIGEST_FILE}\b"):
            load_bundle(bundle)
        file.write_bytes(original)
    assert (load_bundle(bundle).seal.signature is not None) == signed  # restored: loads again


def test_the_issues_attack_offset_ms_is_refused(bundle):
    """Moving the decoded window onto the stimulation artifact by editing the manifest."""
    text = (bundle / MANIFEST_FILE).read_text()
    assert '"offset_ms": 170.0' in text
    (bundle / MANIFEST_FILE).write_text(text.replace('"offset_ms": 170.0', '"offset_ms": 100.0'))
    with pytest.raises(BundleError, match=f"bundle file {MANIFEST_FILE} does not match"):
        load_bundle(bundle)
    r = invoke("verify", str(bundle))
    assert one_error_line(r) == (f"Error: bundle file {MANIFEST_FILE} does not match its SHA-256 in "
                                 f"{DIGEST_FILE} (corrupted or modified): copy the bundle again")


def test_reformatted_digest_file_is_refused(bundle):
    doc = json.loads((bundle / DIGEST_FILE).read_text())
    (bundle / DIGEST_FILE).write_text(json.dumps(doc))  # same content, other bytes
    with pytest.raises(BundleError, match=f"bundle file {DIGEST_FILE} is corrupted or was edited"):
        load_bundle(bundle)


@pytest.mark.parametrize("command", ["verify", "bench", "run"])
@pytest.mark.parametrize("name", ALL_FILES)
def test_cli_refuses_a_flipped_byte_with_one_error_line(bundle, command, name):
    file = bundle / name
    flip(file, file.stat().st_size // 2)
    extra = {"verify": [], "bench": ["--runs", "5"], "run": ["--port", "/dev/null"]}[command]
    line = one_error_line(invoke(command, str(bundle), *extra))
    assert line.startswith(f"Error: bundle file {name} ")


def test_added_and_missing_files_are_named(bundle):
    (bundle / "notes.txt").write_text("added later")
    with pytest.raises(BundleError, match=f"bundle file notes.txt is not covered by {DIGEST_FILE}"):
        load_bundle(bundle)
    (bundle / "notes.txt").unlink()
    (bundle / PROBE_FILE).unlink()
    with pytest.raises(BundleError, match=f"bundle file {PROBE_FILE} is missing from"):
        load_bundle(bundle)


def test_a_bundle_without_digest_says_rebuild(bundle):
    (bundle / DIGEST_FILE).unlink()
    with pytest.raises(BundleError, match=rf"bundle file {DIGEST_FILE} is missing .*"
                                          r"rebuild it with `phosphene quantize`"):
        load_bundle(bundle)
    m = json.loads((bundle / MANIFEST_FILE).read_text())
    m["version"] = 1  # a bundle written before bundle.sig existed
    (bundle / MANIFEST_FILE).write_text(json.dumps(m))
    r = invoke("verify", str(bundle))
    assert one_error_line(r) == (f"Error: {bundle / MANIFEST_FILE} has bundle format version 1, "
                                 f"which has no {DIGEST_FILE} protecting the manifest: rebuild the "
                                 "bundle with `phosphene quantize`")


def test_newer_versions_say_upgrade(bundle):
    m = json.loads((bundle / MANIFEST_FILE).read_text())
    m["version"] = BUNDLE_VERSION + 1
    (bundle / MANIFEST_FILE).write_text(json.dumps(m))
    seal_bundle(bundle)
    with pytest.raises(BundleError, match=r"newer than this phosphene reads .*upgrade phosphene"):
        load_bundle(bundle)
    doc = json.loads((bundle / DIGEST_FILE).read_text())
    doc["version"] = signing.DIGEST_VERSION + 1
    (bundle / DIGEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=f"{DIGEST_FILE} has digest format version 2, newer"):
        load_bundle(bundle)


def test_the_model_is_hashed_once_and_json_parsed_from_the_hashed_bytes(bundle, monkeypatch):
    hashed = []
    real = signing.file_sha256
    monkeypatch.setattr(signing, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    contents: dict = {}
    check_seal(bundle, contents=contents)
    assert hashed == [MODEL_FILE] and set(contents) == {MANIFEST_FILE, PROBE_FILE}
    hashed.clear()
    load_bundle(bundle)
    assert hashed == [MODEL_FILE]


# --------------------------------------------------------------------------------------
# Signatures, keys and pins
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, verify_with", [("ed", "public"), ("ed", "private"), ("hmac", "private")])
def test_sign_and_verify_round_trip(bundle, keys, kind, verify_with):
    key, paths = keys[kind]
    digest = load_bundle(bundle).digest
    r = invoke("sign", str(bundle), "--key", str(paths["private"]))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"signed {bundle}: digest {digest}, {key.algorithm} key {key.key_id}"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(ALL_FILES)  # no temporary left
    b = load_bundle(bundle, key=paths[verify_with])
    assert b.digest == digest  # signing changes bundle.sig only, never the digest
    assert b.seal.signature.algorithm == key.algorithm and b.seal.verified_key_id == key.key_id
    assert load_bundle(bundle, key=key).seal.verified_key_id == key.key_id  # a BundleKey works too
    r = invoke("verify", str(bundle), "--key", str(paths[verify_with]), "--pin", digest)
    assert r.exit_code == 0, r.output
    assert f"digest      sha256:{digest}" in r.stdout
    assert f"signature   {key.algorithm} by key {key.key_id}: verified" in r.stdout
    r = invoke("verify", str(bundle), "--json")  # no key: shown, not checked
    seal = json.loads(r.stdout)["bundle"]["seal"]
    assert seal == {"algorithm": "sha256", "digest": digest,
                    "signature": {"algorithm": key.algorithm, "key_id": key.key_id, "verified": False}}


def test_wrong_key_missing_signature_and_wrong_pin_are_refused(bundle, keys):
    digest = load_bundle(bundle).digest
    with pytest.raises(BundleError, match="the bundle is not signed, but a signature by ed25519 key "
                                          f"{keys['ed'][0].key_id} is required"):
        load_bundle(bundle, key=keys["ed"][1]["public"])
    sign_bundle(bundle, keys["ed"][1]["private"])
    for other in ("ed2", "hmac"):
        k = keys[other][0]
        with pytest.raises(BundleError, match=f"signed by ed25519 key {keys['ed'][0].key_id}, not by "
                                              f"the required {k.algorithm} key {k.key_id}"):
            load_bundle(bundle, key=keys[other][1]["private"])
    sign_bundle(bundle, keys["hmac"][1]["private"])  # replaces the Ed25519 signature
    assert read_seal(bundle).signature.algorithm == "hmac-sha256"
    with pytest.raises(BundleError, match="not by the required hmac-sha256 key"):
        load_bundle(bundle, key=keys["hmac2"][1]["private"])
    wrong = "0" * 64
    with pytest.raises(BundleError, match=f"digest {digest} is not the pinned {wrong}"):
        load_bundle(bundle, pin=wrong)
    assert load_bundle(bundle, pin=f"sha256:{digest.upper()}").digest == digest
    with pytest.raises(BundleError, match="a pinned bundle digest is 64 hex digits"):
        load_bundle(bundle, pin="abc")
    for args in (["--key", str(keys["hmac2"][1]["private"])], ["--pin", wrong]):
        for command, extra in (("verify", []), ("bench", ["--runs", "5"]), ("run", ["--port", "/dev/null"])):
            assert one_error_line(invoke(command, str(bundle), *args, *extra)).startswith("Error: ")


def test_resealing_after_tampering_is_caught_only_with_a_key(bundle, keys):
    """Someone who can rewrite bundle.sig too: the digest alone cannot tell, a signature can."""
    key, paths = keys["ed"]
    signed = sign_bundle(bundle, paths["private"])
    text = (bundle / MANIFEST_FILE).read_text()
    (bundle / MANIFEST_FILE).write_text(text.replace('"offset_ms": 170.0', '"offset_ms": 100.0'))
    resealed = seal_bundle(bundle)  # the tamperer recomputes the digest (and drops the signature)
    assert load_bundle(bundle).digest == resealed.digest != signed.digest
    with pytest.raises(BundleError, match="the bundle is not signed"):
        load_bundle(bundle, key=paths["public"])
    with pytest.raises(BundleError, match="is not the pinned"):
        load_bundle(bundle, pin=signed.digest)
    write_seal(bundle, replace(resealed, signature=signed.signature))  # keeps the old signature
    with pytest.raises(BundleError, match=rf"bundle file {DIGEST_FILE}: the ed25519 signature by key "
                                          rf"{key.key_id} does not verify"):
        load_bundle(bundle, key=paths["public"])
    r = invoke("run", str(bundle), "--port", "/dev/null", env={"PHOSPHENE_BUNDLE_KEY": str(paths["public"])})
    assert "does not verify" in one_error_line(r)


def test_sign_refuses_a_tampered_bundle_and_never_reseals(bundle, keys):
    before = (bundle / DIGEST_FILE).read_bytes()
    flip(bundle / MODEL_FILE, 100)
    r = invoke("sign", str(bundle), "--key", str(keys["hmac"][1]["private"]))
    assert one_error_line(r).startswith(f"Error: bundle file {MODEL_FILE} does not match")
    assert (bundle / DIGEST_FILE).read_bytes() == before
    r = invoke("sign", str(bundle), "--key", str(keys["ed"][1]["public"]))
    assert "is an Ed25519 public key, which only verifies" in one_error_line(r)
    r = invoke("sign", str(bundle), "--key", str(keys["ed"][1]["private"]), "--pin", "1" * 64)
    assert "is not the pinned" in one_error_line(r)  # the pin is checked before any file is hashed


def test_environment_requires_key_and_pin(bundle, keys):
    key, paths = keys["hmac"]
    env = {"PHOSPHENE_BUNDLE_KEY": str(paths["private"])}
    assert "the bundle is not signed" in one_error_line(invoke("verify", str(bundle), env=env))
    assert "the bundle is not signed" in one_error_line(invoke("bench", str(bundle), "--runs", "5", env=env))
    sign_bundle(bundle, paths["private"])
    r = invoke("verify", str(bundle), env=env)
    assert r.exit_code == 0 and f"hmac-sha256 by key {key.key_id}: verified" in r.stdout
    r = invoke("verify", str(bundle), env={"PHOSPHENE_BUNDLE_PIN": "2" * 64})
    assert "is not the pinned" in one_error_line(r)
    missing = str(paths["private"]) + ".gone"
    r = invoke("verify", str(bundle), env={"PHOSPHENE_BUNDLE_KEY": missing})
    assert one_error_line(r) == f"Error: key file not found: {missing}"  # fails closed


def test_run_and_bench_with_a_signed_pinned_bundle(bundle, keys):
    paths = keys["ed"][1]
    seal = sign_bundle(bundle, paths["private"])
    r = invoke("bench", str(bundle), "--runs", "20", "--warmup", "2", "--json", "--key",
               str(paths["public"]), "--pin", seal.digest)
    assert r.exit_code == 0, r.output
    r = invoke("run", str(bundle), "--pty-from-simulator", "--json", "--duration", "0.6",
               "--sim-speed", "2", "--status-s", "0",
               env={"PHOSPHENE_BUNDLE_KEY": str(paths["public"]), "PHOSPHENE_BUNDLE_PIN": seal.digest})
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[-1])["type"] == "summary"


# --------------------------------------------------------------------------------------
# Key files
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, files", [("ed25519", ["bundle-ed25519.key", "bundle-ed25519.pub"]),
                                         ("hmac", ["bundle-hmac.key"])])
def test_keygen_writes_private_keys_0600_and_refuses_to_overwrite(tmp_path, kind, files):
    out = tmp_path / "keys"
    r = invoke("keygen", "--out", str(out), "--type", kind)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # nothing temporary left
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / files[0]).stat().st_mode) == 0o600
    if len(files) == 2:
        assert stat.S_IMODE((out / files[1]).stat().st_mode) == 0o644
    key = load_key(out / files[0])
    assert f"key id       {key.key_id}" in r.stdout and key.private
    before = (out / files[0]).read_bytes()
    r = invoke("keygen", "--out", str(out), "--type", kind)
    assert one_error_line(r) == (f"Error: {out / files[0]} already exists (pass --overwrite to "
                                 "replace it; a replaced key no longer verifies the bundles it signed)")
    assert (out / files[0]).read_bytes() == before
    assert invoke("keygen", "--out", str(out), "--type", kind, "--overwrite").exit_code == 0
    assert (out / files[0]).read_bytes() != before
    assert stat.S_IMODE((out / files[0]).stat().st_mode) == 0o600


def test_bad_key_files_are_named(tmp_path, keys):
    with pytest.raises(KeyFileError, match="key file not found"):
        load_key(tmp_path / "nope.key")
    junk = tmp_path / "junk.key"
    junk.write_text("hello")
    with pytest.raises(KeyFileError, match=f"{junk} is not a phosphene key file"):
        load_key(junk)
    junk.write_text("phosphene-hmac-sha256 abcd\n")
    with pytest.raises(KeyFileError, match="is not a valid HMAC key file"):
        load_key(junk)
    pub = load_key(keys["ed"][1]["public"])
    assert not pub.private and pub.key_id == keys["ed"][0].key_id


def test_ed25519_without_cryptography_says_what_to_install(bundle, keys, monkeypatch):
    for name in [n for n in sys.modules if n == "cryptography" or n.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(KeyFileError, match=r"Ed25519 keys need the `cryptography` package"):
        load_key(keys["ed"][1]["public"])
    sign_bundle(bundle, keys["hmac"][1]["private"])  # HMAC is stdlib only
    assert load_bundle(bundle, key=keys["hmac"][1]["private"]).seal.verified_key_id


def test_seal_refuses_a_directory_with_a_subdirectory(bundle):
    (bundle / "sub").mkdir()
    with pytest.raises(BundleError, match="is not a plain file"):
        seal_bundle(bundle)
    os.rmdir(bundle / "sub")
    assert seal_bundle(bundle).digest == read_seal(bundle).digest
