"""Throw-away test PKI: a CA and a server certificate for 127.0.0.1 / localhost.

The test servers (slapd's LDAPS and StartTLS) need a certificate that a client can
verify with ``ssl.CERT_REQUIRED``. We generate a fresh CA per call so that every test
instance has its own trust anchor, and a client holding another CA fails verification.

Keys are ECDSA P-256: generating them takes milliseconds, unlike RSA. The
``cryptography`` package is used when it is importable; otherwise the ``openssl``
command line does the same job (no new dependency either way).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PkiFiles", "make_test_pki"]

VALID_DAYS = 30


@dataclass(frozen=True)
class PkiFiles:
    """Paths of the PEM files written by :func:`make_test_pki`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def make_test_pki(
    directory: Path,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    common_name: str = "localhost",
    backend: str | None = None,
) -> PkiFiles:
    """Write ``ca.pem``, ``ca.key``, ``server.pem`` and ``server.key`` into ``directory``.

    ``backend`` forces ``"cryptography"`` or ``"openssl"``; by default the
    ``cryptography`` package is used if installed, the ``openssl`` CLI otherwise.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = PkiFiles(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
    )
    if backend is None:
        backend = "cryptography" if _has_cryptography() else "openssl"
    if backend == "cryptography":
        _make_with_cryptography(files, dns_names, ip_addresses, common_name)
    elif backend == "openssl":
        _make_with_openssl(files, dns_names, ip_addresses, common_name)
    else:
        raise ValueError(f"unknown PKI backend {backend!r}")
    for key in (files.ca_key, files.server_key):
        key.chmod(0o600)
    return files


def _has_cryptography() -> bool:
    """True when the optional ``cryptography`` package can be imported."""
    try:
        import cryptography.x509  # noqa: F401
    except ImportError:
        return False
    return True


def _make_with_cryptography(
    files: PkiFiles, dns_names: Sequence[str], ip_addresses: Sequence[str], common_name: str
) -> None:
    """Generate the CA and server certificate with the ``cryptography`` package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(days=1)
    not_after = now + dt.timedelta(days=VALID_DAYS)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GHT test suite"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"GHT test CA {secrets.token_hex(4)}"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    files.ca_key.write_bytes(key_pem(ca_key))
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(key_pem(server_key))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))


def _make_with_openssl(
    files: PkiFiles, dns_names: Sequence[str], ip_addresses: Sequence[str], common_name: str
) -> None:
    """Generate the CA and server certificate with the ``openssl`` command line (OpenSSL >= 1.1.1)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError(
            "neither the Python package 'cryptography' nor the 'openssl' command is available "
            "to build the test certificates: apt-get install -y openssl"
        )
    directory = files.ca_cert.parent
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        proc = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")

    run(
        "req", "-x509", *ec_key, "-sha256", "-days", str(VALID_DAYS),
        "-keyout", str(files.ca_key), "-out", str(files.ca_cert),
        "-subj", f"/O=GHT test suite/CN=GHT test CA {secrets.token_hex(4)}",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    csr = directory / "server.csr"
    run(
        "req", "-new", *ec_key, "-keyout", str(files.server_key), "-out", str(csr),
        "-subj", f"/CN={common_name}",
    )  # fmt: skip
    sans = [f"DNS:{name}" for name in dns_names] + [f"IP:{ip}" for ip in ip_addresses]
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyAgreement\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(sans)}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    run(
        "x509", "-req", "-in", str(csr), "-CA", str(files.ca_cert), "-CAkey", str(files.ca_key),
        "-set_serial", str(secrets.randbits(63)), "-days", str(VALID_DAYS), "-sha256",
        "-extfile", str(ext), "-out", str(files.server_cert),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
