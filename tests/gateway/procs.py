"""Helpers for tests that run the gateway, backends and the dev Consul agent as real processes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from harness import ManagedProcess, ProcessGroup, free_port


def start_upstream_proc(procs: ProcessGroup, name: str, *, tls: tuple[Path, Path] | None = None) -> int:
    """Run tests/gateway/upstream.py as a process; returns its port once /health answers."""
    port = free_port()
    args = ["--port", str(port), "--name", name]
    if tls is not None:
        args += ["--cert", str(tls[0]), "--key", str(tls[1])]
    proc = procs.python(name, "tests.gateway.upstream", *args)
    if tls is None:
        proc.wait_http_ready(f"http://127.0.0.1:{port}/health")
    else:
        proc.wait_port_ready("127.0.0.1", port)
    return port


def start_gateway_proc(procs: ProcessGroup, config: Path, *, workers: int = 1, name: str = "gateway",
                       env: dict[str, str] | None = None, tls: bool = False) -> tuple[ManagedProcess, int]:
    """Run `python -m gateway` on a free port; returns (process, port) once it accepts connections."""
    port = free_port()
    proc = procs.python(name, "gateway", "--config", str(config), "--port", str(port), "--host", "127.0.0.1",
                        "--workers", str(workers), env=env)
    if tls:
        proc.wait_port_ready("127.0.0.1", port)
    else:
        proc.wait_http_ready(f"http://127.0.0.1:{port}/actuator/health", expect=(200, 503))
    return proc, port


async def register(consul: str, service_id: str, port: int, *, name: str = "ws-service",
                   status: str = "passing") -> None:
    """Register an instance with a TTL check (the test decides its health) in the agent at `consul`."""
    body = {"ID": service_id, "Name": name, "Address": "127.0.0.1", "Port": port, "Tags": ["t1"],
            "Meta": {"node": service_id},
            "Check": {"CheckID": f"check-{service_id}", "Name": "ttl", "TTL": "60s", "Status": status}}
    async with aiohttp.ClientSession() as session, session.put(
            f"http://{consul}/v1/agent/service/register", json=body) as response:
        assert response.status == 200, await response.text()


async def set_check(consul: str, service_id: str, state: str) -> None:
    """Mark an instance's TTL check `pass` or `fail`."""
    async with aiohttp.ClientSession() as session, session.put(
            f"http://{consul}/v1/agent/check/{state}/check-{service_id}") as response:
        assert response.status == 200, await response.text()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost/127.0.0.1 and its key, written as PEM files; returns (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def eventually(condition: Callable[[], bool], *, timeout_s: float = 5.0, step_s: float = 0.02) -> bool:
    """Poll `condition` until it holds or `timeout_s` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / step_s) + 1):
        if condition():
            return True
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(step_s)
    return condition()
