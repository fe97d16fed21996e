"""HTTPS for the coordinator: a given certificate, or a self-signed one made and cached.

Why: WebGPU, Cache Storage and crypto.subtle exist only in secure contexts. A browser on
another device opening plain http://192.168.x.y:8471/worker/ gets none of them. Over
https with a certificate the person accepted (they can compare the printed SHA-256
fingerprint), the page is a secure context. Owns making the certificate (the
`cryptography` package) and the `ssl.SSLContext`; it decides nothing else.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, as browsers show it (AA:BB:…)."""
        loaded = x509.load_pem_x509_certificate(self.cert.read_bytes())
        return ":".join(f"{byte:02X}" for byte in loaded.fingerprint(hashes.SHA256()))

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def _names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", "::1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:   # not an address: a DNS name
            names.append(x509.DNSName(host))
    return names


def self_signed(directory: Path, hosts: list[str], days: int = 365) -> Certificate:
    """The cached self-signed certificate for these hosts, made (again) when missing,
    expiring within a week, or not covering every host."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate = Certificate(directory / "cert.pem", directory / "key.pem")
    wanted = {str(name.value) for name in _names(hosts)}
    if certificate.cert.exists() and certificate.key.exists():
        loaded = x509.load_pem_x509_certificate(certificate.cert.read_bytes())
        covered = {str(name.value) for name in
                   loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
        fresh = loaded.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=7)
        if fresh and wanted <= covered:
            return certificate
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tabswarm coordinator")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certificate.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    certificate.key.chmod(0o600)
    certificate.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return certificate
