# SPDX-License-Identifier: Apache-2.0
"""The lab's signaling front over TLS: what ``voxrelay lab up`` puts in front of the transceiver.

A browser grants the microphone (getUserMedia) and WebRTC only to a secure
context, and a page at ``http://192.0.2.1:8080/`` is not one. So the kept-up
lab serves its signaling front with a self-signed certificate
(``make_certificate``), the way a real deployment's load balancer terminates
TLS, and copies the plain bytes to the transceiver's signaling port on the
private side, like ``lab.tcpfront``. Media still goes through the XDP
program on UDP 3478.

    python -m lab.tlsfront --cert CERT --key KEY LISTEN_HOST:PORT TARGET_HOST:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import ipaddress
import signal
import ssl
import sys
from pathlib import Path

from lab.tcpfront import forward_to
from voxrelay.addr import parse_hostport

HANDSHAKE_SECONDS = 10.0
CERT_DAYS = 30


def make_certificate(directory: Path, address: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``address`` (an IP SAN): (cert.pem, key.pem) in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"voxrelay lab {address}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def spki_fingerprint(cert_path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): what Chromium's
    ``--ignore-certificate-errors-spki-list`` takes to trust this one certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def serve(listen: tuple[str, int], target: tuple[str, int], context: ssl.SSLContext,
                stop: asyncio.Event) -> None:
    server = await asyncio.start_server(forward_to(target), *listen, ssl=context,
                                        ssl_handshake_timeout=HANDSHAKE_SECONDS)
    print(f"tlsfront https://{listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.tlsfront")
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("listen", help="HOST:PORT to serve TLS on")
    parser.add_argument("target", help="HOST:PORT of the plain HTTP signaling")
    args = parser.parse_args(argv)
    try:
        listen = parse_hostport(args.listen, allow_zero=True)
        target = parse_hostport(args.target, allow_zero=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    except (ValueError, OSError, ssl.SSLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(listen, target, context, stop)

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
