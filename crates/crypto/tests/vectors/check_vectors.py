#!/usr/bin/env python3
"""Checks the committed envelope test vectors with an independent implementation: Python's
`cryptography` package (OpenSSL underneath; its HPKE module is recent: checked with 48.0).
It follows docs/encryption.md, not Gantry's code.

    python3 crates/crypto/tests/vectors/check_vectors.py
"""

import hashlib
import pathlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = pathlib.Path(__file__).parent
TAG = 16
SIGNATURE_DOMAIN = b"gantry-envelope-signature-v1\n"


def fields(path):
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split("=", 1)
            out[name.strip()] = value.strip()
    return out


def nonce(prefix, index, last):
    return prefix + struct.pack(">I", index) + bytes([1 if last else 0])


def open_chunks(key, prefix, header_hash, chunk_size, body):
    aead, plaintext, index, record = AESGCM(key), b"", 0, chunk_size + TAG
    while True:
        # The input's end marks the final chunk.
        last = len(body) <= record
        chunk, body = body[:record], body[record:]
        plaintext += aead.decrypt(nonce(prefix, index, last), chunk, header_hash)
        if last:
            return plaintext
        index += 1


def check_stream():
    v = fields(HERE / "stream-v1.txt")
    key, prefix = bytes.fromhex(v["data_key"]), bytes.fromhex(v["nonce_prefix"])
    header_hash, size = bytes.fromhex(v["header_hash"]), int(v["chunk_size"])
    plaintext, ciphertext = bytes.fromhex(v["plaintext"]), bytes.fromhex(v["ciphertext"])
    assert header_hash == hashlib.sha256(b"gantry stream test vector").digest()
    assert plaintext == bytes(i % 256 for i in range(1500))
    aead, sealed = AESGCM(key), b""
    chunks = [plaintext[i : i + size] for i in range(0, len(plaintext), size)]
    for index, chunk in enumerate(chunks):
        sealed += aead.encrypt(nonce(prefix, index, index == len(chunks) - 1), chunk, header_hash)
    assert sealed == ciphertext, "stream vector: ciphertext differs"
    assert open_chunks(key, prefix, header_hash, size, ciphertext) == plaintext
    print("stream-v1.txt: ok")


def verify_signature(public_key, signature, message):
    """RSA-PSS-SHA256 (MGF1-SHA256, 32-byte salt) or ECDSA-P256-SHA256 (DER)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public_key.verify(signature, message, pss, hashes.SHA256())
    else:
        assert isinstance(public_key.curve, ec.SECP256R1)
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))


def check_envelope(name, expected_algorithm):
    blob = bytes.fromhex("".join((HERE / f"{name}-envelope.hex").read_text().split()))
    key = serialization.load_pem_private_key((HERE / f"{name}-test-key.pem").read_bytes(), None)
    assert blob[:8] == b"GNTRYENV" and blob[8] == 1 and blob[9] == expected_algorithm
    (chunk_size,) = struct.unpack(">I", blob[10:14])
    fingerprint = blob[14:46]
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert fingerprint == hashlib.sha256(spki).digest(), f"{name}: fingerprint"
    (context_len,) = struct.unpack(">H", blob[46:48])
    at = 48 + context_len
    context = blob[48:at]
    assert context == (
        b"gantry-envelope-v1\npool=01JTESTVECTORPOOL000000000\n"
        b"stack=01JTESTVECTORSTACK00000000\nrun=01JTESTVECTORRUN0000000000\npurpose=state"
    )
    (wrapped_len,) = struct.unpack(">H", blob[at : at + 2])
    wrapped = blob[at + 2 : at + 2 + wrapped_len]
    at += 2 + wrapped_len
    prefix, signed_len = blob[at : at + 7], at + 7
    (signature_len,) = struct.unpack(">H", blob[signed_len : signed_len + 2])
    signature = blob[signed_len + 2 : signed_len + 2 + signature_len]
    header_len = signed_len + 2 + signature_len
    # The header hash covers everything before the signature section.
    header_hash = hashlib.sha256(blob[:signed_len]).digest()
    message = SIGNATURE_DOMAIN + header_hash
    verify_signature(key.public_key(), signature, message)
    for wrong in (message[:-1] + bytes([message[-1] ^ 1]), header_hash):
        try:
            verify_signature(key.public_key(), signature, wrong)
        except InvalidSignature:
            pass
        else:
            raise AssertionError(f"{name}: the signature verifies over the wrong message")
    if expected_algorithm == 1:
        assert signature_len == key.key_size // 8, f"{name}: RSA-PSS signature length"
        assert isinstance(key, rsa.RSAPrivateKey)
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), context)
        data_key = key.decrypt(wrapped, oaep)
    else:
        suite = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
        data_key = suite.decrypt(wrapped, key, info=context)
    assert len(data_key) == 32
    plaintext = open_chunks(data_key, prefix, header_hash, chunk_size, blob[header_len:])
    assert plaintext == (HERE / "envelope-plaintext.txt").read_bytes(), f"{name}: plaintext"
    print(f"{name}-envelope.hex: ok")


check_stream()
check_envelope("rsa2048", 1)
check_envelope("p256", 2)
