"""``make certs``: a private CA, certificates for the services and their clients, and bearer tokens, offline.

For a cluster without cert-manager, a compose file with TLS, or a test. Every certificate is
written as a cert-manager ``Certificate`` writes its Secret: a folder with ``tls.crt``,
``tls.key`` and ``ca.crt`` (so ``kubectl create secret generic NAME --from-file=DIR`` makes the
Secret the manifests mount). Needs the ``cryptography`` package (the dev extra)::

    python deploy/certs.py ca certs                                  # certs/ca.crt, certs/ca.key (kept if there)
    python deploy/certs.py cert certs pruner --dns pruner --dns localhost --ip 127.0.0.1
    python deploy/certs.py cert certs ops --client                   # a client certificate (CN ops), for mTLS
    python deploy/certs.py services certs --namespace slimyolo       # the four services, their Kubernetes names
    python deploy/certs.py token operate alice alice.token           # prints the tokens-file line of a new token

The CA's key stays in ``certs/ca.key``: keep it offline; whoever holds it can mint certificates.
Server certificates are valid for 90 days and client ones for 30 (``--days``), as cert-manager's
defaults are short: rotate by running the command again and replacing the Secret (the services
read their files again for each new connection).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slimyolo.security import Role, token_digest

SERVICES = ("trainer", "pruner", "converter", "inference")


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write atomically (a service re-reading the folder never sees half a file); keys readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    if private:
        tmp.chmod(0o600)
    os.replace(tmp, path)


def make_ca(folder: Path, name: str = "SlimYOLO CA", days: int = 3650) -> None:
    """``folder/ca.crt`` and ``folder/ca.key``, unless they exist (a new CA would invalidate every certificate)."""
    if (folder / "ca.crt").exists() and (folder / "ca.key").exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(folder / "ca.key", _private_pem(key), private=True)
    _write(folder / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))


def make_cert(folder: Path, name: str, dns: list[str], ips: list[str], client: bool = False, days: int = 90) -> Path:
    """``folder/NAME/{tls.crt,tls.key,ca.crt}``: a certificate for ``name`` signed by the CA of ``folder``.

    A server certificate carries ``dns`` and ``ips`` as subject alternative names (what clients check against
    the address they dial); a client certificate (``client``) names ``name`` as its common name and DNS name,
    which a tokens file maps to a role with ``ROLE NAME cert:NAME``.
    """
    try:
        ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    except FileNotFoundError:
        sys.exit(f"{folder}: no ca.crt and ca.key; make them first: python deploy/certs.py ca {folder}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in (dns or [name])]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    # A service's certificate also serves it as a client (the pruner's sweep times models on the inference service).
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH,
                                                               ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = folder / name
    _write(out / "tls.key", _private_pem(key), private=True)
    _write(out / "tls.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    return out


def make_token(role: str, name: str, path: Path) -> str:
    """Write a new random token to ``path`` (owner-readable) and return its tokens-file line."""
    token = secrets.token_urlsafe(32)
    _write(path, token.encode(), private=True)
    return f"{role} {name} {token_digest(token)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/certs.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ca", help="make the CA (kept if it exists)")
    p.add_argument("folder", type=Path)
    p = sub.add_parser("cert", help="a server (or --client) certificate signed by the CA of FOLDER")
    p.add_argument("folder", type=Path)
    p.add_argument("name")
    p.add_argument("--dns", action="append", default=[], help="a DNS name the certificate carries (repeat)")
    p.add_argument("--ip", action="append", default=[], help="an IP address the certificate carries (repeat)")
    p.add_argument("--client", action="store_true", help="a client certificate (mTLS) instead of a server one")
    p.add_argument("--days", type=int, help="validity (default 90 for a server, 30 for a client)")
    p = sub.add_parser("services", help="the CA and a certificate for each service under its Kubernetes names")
    p.add_argument("folder", type=Path)
    p.add_argument("--namespace", default="slimyolo")
    p = sub.add_parser("token", help="write a new token to FILE and print its tokens-file line")
    p.add_argument("role", choices=[str(r) for r in Role])
    p.add_argument("name")
    p.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "ca":
        make_ca(args.folder)
    elif args.command == "cert":
        days = args.days or (30 if args.client else 90)
        print(make_cert(args.folder, args.name, args.dns, args.ip, args.client, days))
    elif args.command == "services":
        make_ca(args.folder)
        for service in SERVICES:
            # inference-headless: the Service whose DNS name lists every pod, which round-robin clients dial
            hosts = [service, *(["inference-headless"] if service == "inference" else [])]
            dns = [f"{host}{suffix}" for host in hosts for suffix in
                   ("", f".{args.namespace}", f".{args.namespace}.svc", f".{args.namespace}.svc.cluster.local")]
            print(make_cert(args.folder, service, [*dns, "localhost"], ["127.0.0.1"]))
    else:
        print(make_token(args.role, args.name, args.file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
