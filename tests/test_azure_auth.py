"""Signing the export in to Entra ID with MSAL (client credentials) against the fake's HTTPS authority.

A client secret and a certificate both work; every refusal is one clear error naming what to fix,
and never shows the secret; a token Graph stops accepting is replaced once; a missing application
permission stops the push with the permission's name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from directory_sync.azure import AzureAuthError, GraphPermissionDenied
from directory_sync.azure.auth import TokenProvider
from directory_sync.config import AzureSettings, load_settings
from directory_sync.errors import ConfigError
from tests.servers.graph_fake import FakeApp
from tests.test_azure_support import CLIENT_ID, SECRET, SECRET_ENV, World, azure_world, small_ght


def app_certificate(directory: Path) -> tuple[Path, bytes]:
    """An RSA key and self-signed certificate, as uploaded to an app registration: (PEM file, cert)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ght-azure-export")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = directory / "azure-app.pem"
    path.write_bytes(key_pem + cert_pem)
    return path, cert_pem


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with azure_world(tmp_path) as w:
        yield w


def tokens(world: World) -> TokenProvider:
    settings = world.settings
    assert settings.azure is not None
    return TokenProvider(settings.azure)


def test_a_client_secret_gets_a_token_once_and_msal_caches_it(world: World) -> None:
    provider = tokens(world)
    first = provider.token()
    assert first.count(".") == 2  # a JWT
    assert provider.token() == first
    assert world.fake.stats.token_requests == 1


def test_a_certificate_gets_a_token(tmp_path: Path) -> None:
    pem, cert = app_certificate(tmp_path)
    with azure_world(tmp_path, apps=[FakeApp(CLIENT_ID, certificate_pem=cert)]) as world:
        world.configure(client_secret=None, certificate={"file": str(pem)})
        small_ght(world)
        assert world.push().created == 7


def test_a_certificate_the_app_does_not_know_is_refused(tmp_path: Path) -> None:
    pem, _ = app_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    _, other = app_certificate(tmp_path / "other")
    with azure_world(tmp_path, apps=[FakeApp(CLIENT_ID, certificate_pem=other)]) as world:
        world.configure(client_secret=None, certificate={"file": str(pem)})
        with pytest.raises(AzureAuthError) as refused:
            tokens(world).token()
        assert refused.value.code == "AADSTS700027"
        assert "upload the certificate" in str(refused.value)


def test_a_wrong_secret_is_one_clear_line_that_never_shows_the_secret(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    with pytest.raises(AzureAuthError) as refused:
        tokens(world).token()
    message = str(refused.value)
    assert message == (
        "Entra ID refused the token request (AADSTS7000215): the client secret in environment variable "
        f"{SECRET_ENV} is not valid for application '{CLIENT_ID}': give the secret's value (not its id), "
        "and check that it has not been replaced"
    )
    assert "not-the-secret" not in message and SECRET not in message and "\n" not in message


def test_a_wrong_tenant_or_an_unknown_app_says_which(world: World) -> None:
    world.configure(tenant_id="00000000-0000-0000-0000-000000000000")
    with pytest.raises(AzureAuthError) as refused:
        tokens(world).token()
    assert refused.value.code == "AADSTS90002"
    assert "tenant '00000000-0000-0000-0000-000000000000' was not found: check azure.tenant_id" in str(
        refused.value
    )

    world.configure(client_id="11111111-2222-3333-4444-555555555555")
    with pytest.raises(AzureAuthError) as refused:
        tokens(world).token()
    assert refused.value.code == "AADSTS700016"
    assert "check azure.client_id" in str(refused.value)


def test_a_secret_that_cannot_be_read_is_a_configuration_error(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(
        ConfigError, match=f"azure.client_secret: environment variable {SECRET_ENV} is not set"
    ):
        tokens(world).token()


def test_a_token_graph_stops_accepting_is_replaced_once(world: World) -> None:
    small_ght(world)
    with world.client() as client:
        world.push(client=client)
        assert world.fake.stats.token_requests == 1
        world.fake.revoke_tokens()  # MSAL's cached token is now refused with 401
        world.hire("ch-orange", "lmartin", "Martin", "Louise", title="Infirmière")
        world.sync()
        assert world.push(client=client).created == 1
    assert world.fake.stats.token_requests == 2


@pytest.mark.parametrize(
    ("roles", "needed"),
    [(("User.ReadWrite.All",), "Group.ReadWrite.All"), (("Group.ReadWrite.All",), "User.ReadWrite.All")],
)
def test_a_missing_permission_stops_the_push_naming_the_permission(
    tmp_path: Path, roles: tuple[str, ...], needed: str
) -> None:
    with azure_world(tmp_path, apps=[FakeApp(CLIENT_ID, secret=SECRET, roles=roles)]) as world:
        small_ght(world)
        with pytest.raises(GraphPermissionDenied) as denied:
            world.push()
        assert "(403 Authorization_RequestDenied): Insufficient privileges to complete the operation." in str(
            denied.value
        )
        assert f"needs the application permission {needed}, with admin consent" in str(denied.value)
        assert world.fake.users == {}


def test_the_azure_table_is_validated_with_the_file_and_key(tmp_path: Path) -> None:
    base = 'sites = []\n[azure]\ntenant_id = "t"\nclient_id = "c"\ndomain = "ght-test.fr"\n'
    secret = 'client_secret = {env = "X"}\n'
    cases = {
        'client_secret = "hunter2"\n': "azure.client_secret",
        "": "give exactly one of client_secret or certificate",
        secret + 'extension_attributes = {extensionAttribute16 = "rpps"}\n': "extensionAttribute16",
        secret + 'extension_attributes = {extensionAttribute1 = "salary"}\n': "unknown source",
        secret + 'authority = "http://login.example"\n': "https://",
    }
    for extra, expected in cases.items():
        path = tmp_path / "ght.toml"
        path.write_text(base + extra)
        with pytest.raises(ConfigError, match=expected) as wrong:
            load_settings(path)
        assert "hunter2" not in str(wrong.value)
    path.write_text(base + secret)
    azure = load_settings(path).azure
    assert isinstance(azure, AzureSettings)
    assert (azure.deletion_threshold, azure.deletion_grace_days, azure.usage_location) == (500, 30, "FR")
