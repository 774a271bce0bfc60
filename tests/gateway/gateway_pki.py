"""Throwaway certificate authorities and certificates for the TLS and mutual TLS tests."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVER_NAME = "localhost"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate, in PEM."""

    key_pem: bytes
    cert_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Writes ``<stem>.key`` and ``<stem>.crt``; returns (key path, certificate path)."""
        key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.crt"
        key_path.write_bytes(self.key_pem)
        cert_path.write_bytes(self.cert_pem)
        return key_path, cert_path


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates, valid for an hour."""

    def __init__(self, common_name: str) -> None:
        self._key, self.certificate = _sign(common_name, None, ca=True)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, to trust."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        """Writes the CA certificate to ``path``."""
        path.write_bytes(self.cert_pem)
        return path

    def issue(self, common_name: str, *, server: bool = False) -> Issued:
        """A certificate signed by this CA; ``server`` adds the SAN ``localhost``."""
        key, certificate = _sign(common_name, (self._key, self.certificate.subject), server=server)
        return Issued(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            certificate.public_bytes(serialization.Encoding.PEM),
        )


def _sign(
    common_name: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    signer_key, issuer_name = issuer or (key, _name(common_name))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False
        )
    return key, builder.sign(signer_key, hashes.SHA256())
