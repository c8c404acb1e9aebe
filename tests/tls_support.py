"""A throwaway PKI made at test time: CAs, a server certificate and client certificates."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Identity:
    cert: str
    key: str


class CA:
    """A certificate authority that issues server and client certificates into ``directory``."""

    def __init__(self, directory: str, name: str):
        self.directory = directory
        self.name = name
        self.key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                           critical=True)
            .sign(self.key, hashes.SHA256()))
        self.cert_path = _write(os.path.join(directory, f"{name}.pem"),
                                self.certificate.public_bytes(serialization.Encoding.PEM))
        # A directory of trusted roots, as Twisted's tls: trustRoots= takes.
        self.roots_dir = os.path.join(directory, f"{name}-roots")
        os.makedirs(self.roots_dir, exist_ok=True)
        _write(os.path.join(self.roots_dir, "ca.pem"),
               self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, server: bool = False) -> Identity:
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(self.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(cn), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        base = os.path.join(self.directory, f"{self.name}-{cn}")
        return Identity(
            _write(base + ".crt", cert.public_bytes(serialization.Encoding.PEM)),
            _write(base + ".key", _key_pem(key)))


def mtls_listen(port: int, server: Identity, ca: CA) -> str:
    return (f"mtls:{port}:interface=127.0.0.1:certKey={server.cert}:privateKey={server.key}"
            f":caCerts={ca.cert_path}")


def tls_connect(port: int, ca: CA, client: Identity = None, host: str = "localhost") -> str:
    text = f"tls:{host}:{port}:trustRoots={ca.roots_dir}"
    if client is not None:
        text += f":certificate={client.cert}:privateKey={client.key}"
    return text
