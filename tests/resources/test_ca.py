#!/usr/bin/env python3
"""A test certificate authority (Python `cryptography`), for TLS tests that
need certificates a client can validate: MTA-STS policy hosts and MX hosts.

Usage: test_ca.py OUTDIR LEAF=NAME[,NAME...] [LEAF=NAME[,NAME...] ...]

Writes OUTDIR/ca.pem (the CA certificate: give it to the client as a trust
anchor) and, for each LEAF, OUTDIR/LEAF.pem (its certificate, valid for the
names as DNS subjectAltNames, for serverAuth, signed by the CA) and
OUTDIR/LEAF.key (its PKCS#8 key). Nothing is printed.
"""
import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def main():
    outdir, leaves = sys.argv[1], sys.argv[2:]
    os.makedirs(outdir, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AgentKeys test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write(os.path.join(outdir, "ca.pem"), ca.public_bytes(serialization.Encoding.PEM))

    for spec in leaves:
        label, names = spec.split("=", 1)
        names = [n for n in names.split(",") if n]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        write(os.path.join(outdir, label + ".pem"), cert.public_bytes(serialization.Encoding.PEM))
        write(
            os.path.join(outdir, label + ".key"),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )


main()
