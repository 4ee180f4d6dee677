"""Certificates, keys and kubeconfigs of a throw-away control plane.

Everything is generated fresh for each control plane and lives in its own directory: nothing here is a secret
worth keeping, and nothing is shared with a real cluster.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The in-cluster names of the API server; harmless on loopback, and what a pod's client would dial.
SERVICE_IP = "10.96.0.1"
SERVICE_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Identity:
    """A client of the API server: the certificate's CN is the user, each O a group."""

    user: str
    groups: tuple[str, ...] = ()


ADMIN = Identity("gpufleet-admin", ("system:masters",))
# The users RBAC's bootstrap roles are bound to: the components run with the rights they have in a real cluster.
CONTROLLER_MANAGER = Identity("system:kube-controller-manager")
SCHEDULER = Identity("system:kube-scheduler")


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    # Backdated a little: the components compare against their own clocks the moment they start.
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
    )


class Pki:
    """A CA that signs the serving certificate and one client certificate per identity, plus the
    service-account key pair. Files are written under `directory` with plain names."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # EC keys: generating them is instant, and every component accepts them for TLS.
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("gpufleet-dev-ca")
        self._ca_name = ca_name
        self._ca_cert = (
            _builder(ca_name, ca_name, self._ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )  # fmt: skip
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_cert = self._write("ca.crt", _pem_cert(self._ca_cert))
        self.ca_pem = _pem_cert(self._ca_cert)
        self.serving_cert, self.serving_key = self._serving()
        self.service_account_key, self.service_account_pub = self._service_account()

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def _sign(self, subject: x509.Name, key, usage, sans: list[x509.GeneralName] | None = None):
        builder = (
            _builder(subject, self._ca_name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self._ca_key, hashes.SHA256())

    def _serving(self) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address(SERVICE_IP)),
            x509.DNSName("localhost"),
            *(x509.DNSName(n) for n in SERVICE_NAMES),
        ]
        cert = self._sign(_name("kube-apiserver"), key, ExtendedKeyUsageOID.SERVER_AUTH, sans)
        return self._write("apiserver.crt", _pem_cert(cert)), self._write("apiserver.key", _pem_key(key))

    def _service_account(self) -> tuple[Path, Path]:
        # RSA: the algorithm every consumer of service-account tokens (RS256) is sure to accept.
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return self._write("sa.key", _pem_key(key)), self._write("sa.pub", pub)

    def client(self, identity: Identity) -> tuple[bytes, bytes]:
        """A client certificate and key (PEM) for `identity`."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(_name(identity.user, identity.groups), key, ExtendedKeyUsageOID.CLIENT_AUTH)
        return _pem_cert(cert), _pem_key(key)

    def ssl_context(self, identity: Identity) -> ssl.SSLContext:
        """A client TLS context that trusts the CA and presents a certificate for `identity`."""
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        cert, key = self.client(identity)
        # The ssl module reads a client certificate only from files.
        name = identity.user.replace(":", "-")
        context.load_cert_chain(self._write(f"{name}.crt", cert), self._write(f"{name}.key", key))
        return context

    def kubeconfig(self, path: Path, server: str, identity: Identity) -> Path:
        """A self-contained kubeconfig (certificates inlined) for `identity` against `server`."""
        cert, key = self.client(identity)
        b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
        name = "gpufleet-dev"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": name, "cluster": {"server": server, "certificate-authority-data": b64(self.ca_pem)}}
            ],
            "users": [
                {
                    "name": identity.user,
                    "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
                }
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": identity.user}}],
            "current-context": name,
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path
