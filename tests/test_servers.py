"""Prove the real-server fixtures work: slapd (bind, TLS, paging, limits, pause) and PostgreSQL."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import ldap3
import pytest
import sqlalchemy as sa
from ldap3.core.exceptions import LDAPCommunicationError, LDAPSocketOpenError

from tests.servers.certs import make_test_pki
from tests.servers.postgres import PostgresServer
from tests.servers.slapd import SlapdFactory, SlapdServer, Suffix, ldif_entry

AVIGNON = "dc=ch-avignon,dc=fr"
NIMES = "dc=ch-nimes,dc=fr"
PEOPLE = 100
PAGED_RESULTS = "1.2.840.113556.1.4.319"


def people_ldif(path: Path, suffix: str, count: int) -> Path:
    """Suffix entry, ou=people and ``count`` inetOrgPerson entries (no entryUUID: slapadd adds it)."""
    value = suffix.split(",")[0].split("=")[1]
    with path.open("w") as out:
        out.write(ldif_entry(suffix, {"objectClass": ["dcObject", "organization"], "dc": value, "o": value}))
        out.write(ldif_entry(f"ou=people,{suffix}", {"objectClass": "organizationalUnit", "ou": "people"}))
        for i in range(count):
            uid = f"agent{i:05d}"
            out.write(
                ldif_entry(
                    f"uid={uid},ou=people,{suffix}",
                    {"objectClass": "inetOrgPerson", "uid": uid, "cn": f"Agent {i}", "sn": "Médecin"},
                )
            )
    return path


@pytest.fixture
def slapd(slapd_factory: SlapdFactory, tmp_path: Path) -> SlapdServer:
    """Two hospitals: Avignon loaded from an LDIF with PEOPLE agents, Nîmes created empty."""
    return slapd_factory(
        [Suffix(AVIGNON, people_ldif(tmp_path / "avignon.ldif", AVIGNON, PEOPLE)), Suffix(NIMES)]
    )


def tls(ca_file: Path | None) -> ldap3.Tls:
    """Client TLS settings that verify the server certificate against ``ca_file``."""
    return ldap3.Tls(ca_certs_file=str(ca_file) if ca_file else None, validate=ssl.CERT_REQUIRED)


def paged_search(conn: ldap3.Connection, base: str, page_size: int = 10) -> tuple[list[ldap3.Entry], int]:
    """Every entry under ``base`` page by page, and the result code of the last page."""
    entries: list[ldap3.Entry] = []
    cookie: bytes | None = None
    while True:
        conn.search(
            base,
            "(objectClass=inetOrgPerson)",
            attributes=["uid", "entryUUID"],
            paged_size=page_size,
            paged_cookie=cookie,
        )
        entries.extend(conn.entries)
        cookie = conn.result.get("controls", {}).get(PAGED_RESULTS, {}).get("value", {}).get("cookie")
        if conn.result["result"] != 0 or not cookie:
            return entries, conn.result["result"]


def test_reader_binds_over_plain_ldap(slapd: SlapdServer) -> None:
    for suffix in (AVIGNON, NIMES):
        conn = ldap3.Connection(slapd.url, slapd.reader_dn(suffix), slapd.reader_password)
        assert conn.bind(), conn.result
        conn.unbind()


def test_starttls_and_ldaps_verify_against_test_ca(slapd: SlapdServer) -> None:
    conn = ldap3.Connection(
        ldap3.Server(slapd.url, tls=tls(slapd.ca_file)), slapd.reader_dn(AVIGNON), slapd.reader_password
    )
    conn.open()
    assert conn.start_tls()
    assert conn.bind(), conn.result
    conn.unbind()

    server = ldap3.Server(slapd.ldaps_url, use_ssl=True, tls=tls(slapd.ca_file))
    conn = ldap3.Connection(server, slapd.reader_dn(AVIGNON), slapd.reader_password)
    assert conn.bind(), conn.result
    assert conn.search(AVIGNON, "(uid=agent00001)", attributes=["entryUUID"])
    assert len(conn.entries) == 1
    conn.unbind()


@pytest.mark.parametrize("trust", ["system", "other-ca"])
def test_tls_without_the_test_ca_fails(slapd: SlapdServer, tmp_path: Path, trust: str) -> None:
    ca = None if trust == "system" else make_test_pki(tmp_path / "other").ca_cert
    server = ldap3.Server(slapd.ldaps_url, use_ssl=True, tls=tls(ca), connect_timeout=5)
    with pytest.raises(LDAPSocketOpenError, match=r"(?i)certificate verify failed"):
        ldap3.Connection(server, slapd.reader_dn(AVIGNON), slapd.reader_password, auto_bind=True)


def test_wrong_password_is_invalid_credentials(slapd: SlapdServer) -> None:
    conn = ldap3.Connection(slapd.url, slapd.reader_dn(AVIGNON), "not-the-password")
    assert not conn.bind()
    assert conn.result["description"] == "invalidCredentials"


def test_root_dn_writes(slapd: SlapdServer) -> None:
    conn = ldap3.Connection(slapd.url, slapd.root_dn(NIMES), slapd.root_password, auto_bind=True)
    assert conn.add(f"uid=new,ou=people,{NIMES}", "inetOrgPerson", {"cn": "New", "sn": "Agent"}), conn.result
    reader = ldap3.Connection(slapd.url, slapd.reader_dn(NIMES), slapd.reader_password, auto_bind=True)
    assert reader.search(NIMES, "(uid=new)", attributes=["entryUUID"])
    assert len(reader.entries[0].entryUUID.value) == 36
    assert not reader.add(f"uid=other,ou=people,{NIMES}", "inetOrgPerson", {"cn": "O", "sn": "A"})
    assert reader.result["description"] == "insufficientAccessRights"


def test_anonymous_reads_nothing(slapd: SlapdServer) -> None:
    conn = ldap3.Connection(slapd.url, auto_bind=True)
    conn.search(AVIGNON, "(objectClass=*)")
    assert conn.entries == []


def test_paged_search_returns_every_entry_with_entryuuid(slapd: SlapdServer) -> None:
    conn = ldap3.Connection(slapd.url, slapd.reader_dn(AVIGNON), slapd.reader_password, auto_bind=True)
    entries, code = paged_search(conn, AVIGNON, page_size=10)
    assert code == 0
    assert len(entries) == PEOPLE
    uuids = {e.entryUUID.value for e in entries}
    assert len(uuids) == PEOPLE and all(len(u) == 36 for u in uuids)


@pytest.mark.parametrize("page_size", [10, 3])
def test_limited_account_hits_size_limit_across_pages(slapd: SlapdServer, page_size: int) -> None:
    conn = ldap3.Connection(slapd.url, slapd.limited_dn(AVIGNON), slapd.reader_password, auto_bind=True)
    entries, code = paged_search(conn, AVIGNON, page_size=page_size)
    assert code == 4  # sizeLimitExceeded (note: ldap3's search() still returns True for it)
    assert len(entries) == slapd.limited_size


def test_pause_times_out_and_resume_recovers(slapd: SlapdServer) -> None:
    conn = ldap3.Connection(
        slapd.url, slapd.reader_dn(AVIGNON), slapd.reader_password, receive_timeout=1, auto_bind=True
    )
    with slapd.paused():
        started = time.monotonic()
        with pytest.raises(LDAPCommunicationError):
            conn.search(AVIGNON, "(uid=agent00001)")
        assert time.monotonic() - started < 5
    conn = ldap3.Connection(
        slapd.url, slapd.reader_dn(AVIGNON), slapd.reader_password, receive_timeout=5, auto_bind=True
    )
    assert conn.search(AVIGNON, "(uid=agent00001)")
    assert len(conn.entries) == 1


def test_stop_and_start_keep_ports_and_data(slapd: SlapdServer) -> None:
    url = slapd.url
    slapd.stop()
    assert not slapd.running
    with pytest.raises(LDAPSocketOpenError):
        ldap3.Connection(slapd.url, slapd.reader_dn(AVIGNON), slapd.reader_password, auto_bind=True)
    slapd.start()
    assert slapd.url == url
    conn = ldap3.Connection(slapd.url, slapd.reader_dn(AVIGNON), slapd.reader_password, auto_bind=True)
    assert conn.search(AVIGNON, "(uid=agent00099)")
    assert len(conn.entries) == 1


def test_postgres_databases_are_usable_and_distinct(postgres_server: PostgresServer) -> None:
    first, second = postgres_server.create_database(), postgres_server.create_database()
    assert first != second
    try:
        engines = [sa.create_engine(url) for url in (first, second)]
        with engines[0].begin() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
            conn.execute(sa.text("CREATE TABLE only_in_first (id int)"))
        with engines[1].connect() as conn:
            names = {row[0] for row in conn.execute(sa.text("SELECT tablename FROM pg_tables"))}
            assert "only_in_first" not in names
        for engine in engines:
            engine.dispose()
    finally:
        for url in (first, second):
            postgres_server.drop_database(url.rsplit("/", 1)[1])


def test_database_url_fixture(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
