"""Credentials the tests make up: nobody else holds them, and no service accepts them."""

from __future__ import annotations

import json
from pathlib import Path


def service_account_key(path: Path) -> Path:
    """A throwaway service account key file: a fresh RSA key nobody else knows."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {"type": "service_account", "project_id": "test", "private_key_id": "0" * 40,
            "private_key": pem, "client_email": "signer@test.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}  # fmt: skip
    path.write_text(json.dumps(info))
    return path
