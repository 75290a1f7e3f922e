"""The built-in wss option: tls_cert and tls_key in the config."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import FAST_KDF, PASSWORD
from websockets.asyncio.client import connect

from desktop_agent.app import Agent
from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage

TOKEN = "tls-token-0123456789abcdef"


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_wss_with_the_configured_certificate(tmp_path, monkeypatch):
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    cert, key = self_signed(tmp_path)
    Repository.init(LocalStorage(tmp_path / "repo"), PASSWORD, kdf_params=FAST_KDF)
    config = Config(
        agent=AgentConfig(token=TOKEN, tls_cert=str(cert), tls_key=str(key)),
        repository=RepositoryConfig(path=str(tmp_path / "repo"), password_file=None),
        backup=BackupConfig(sources=(str(tmp_path),), exclude=(), interval_minutes=0),
        path=tmp_path / "c.toml",
    )

    async def scenario() -> None:
        agent = Agent(config, host="127.0.0.1", port=0, schedule=False)
        await agent.start()
        try:
            assert agent.server.url.startswith("wss://")
            ctx = ssl.create_default_context(cafile=str(cert))
            ctx.check_hostname = False
            async with connect(
                agent.server.url, ssl=ctx, additional_headers={"Authorization": f"Bearer {TOKEN}"}
            ) as ws:
                await ws.send('{"type":"agent:status","payload":null}')
                assert json.loads(await ws.recv())["type"] == "agent:status"
        finally:
            await agent.stop()

    asyncio.run(scenario())
