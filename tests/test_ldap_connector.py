"""The LDAP connector against real slapd: paged reads, TLS, and every way a read can fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from directory_sync.config import load_site_mapping
from directory_sync.connectors import open_connector
from directory_sync.errors import SourceReadIncomplete, SourceUnavailable
from tests.hospitals import ldap_connection, person, suffix_ldif, write_site
from tests.servers.certs import make_test_pki
from tests.servers.slapd import SlapdServer, Suffix

SUFFIX = "dc=ch-orange,dc=fr"
NAMES = ["Hélène", "Jean-François", "Loïc", "Noémie", "Zoë", "Ægidius", "N'Golo"]


@pytest.fixture
def server(tmp_path: Path, slapd_factory: Any, monkeypatch: pytest.MonkeyPatch) -> SlapdServer:
    entries = [person(SUFFIX, f"user{i:03d}", f"Nom{i}", NAMES[i % len(NAMES)]) for i in range(120)]
    slapd: SlapdServer = slapd_factory(
        [Suffix(SUFFIX, suffix_ldif(tmp_path / "orange.ldif", SUFFIX, entries))]
    )
    monkeypatch.setenv("GHT_TEST_BIND_PASSWORD", slapd.reader_password)
    return slapd


def connector(tmp_path: Path, server: SlapdServer, **overrides: Any) -> Any:
    path = write_site(
        tmp_path, "ch-orange", ldap_connection(server, SUFFIX, "GHT_TEST_BIND_PASSWORD", **overrides)
    )
    return open_connector(load_site_mapping(path))


def test_a_paged_read_returns_every_entry_with_its_entry_uuid(tmp_path: Path, server: SlapdServer) -> None:
    records = list(connector(tmp_path, server, page_size=7).read_all())
    assert len(records) == 120
    assert len({r.anchor for r in records}) == 120
    assert all(len(r.anchor) == 36 for r in records)  # entryUUID, not the DN
    assert {r.first("givenName") for r in records} == set(NAMES)  # UTF-8 intact
    assert connector(tmp_path, server).count() == 120


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_tls_with_the_right_ca_verifies_the_server(tmp_path: Path, server: SlapdServer, mode: str) -> None:
    url = server.ldaps_url if mode == "ldaps" else server.url
    tls = {"ca_file": str(server.ca_file), "start_tls": mode == "starttls"}
    assert connector(tmp_path, server, url=url, tls=tls).count() == 120


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_tls_with_another_ca_is_refused(tmp_path: Path, server: SlapdServer, mode: str) -> None:
    other = make_test_pki(tmp_path / "other-pki")
    url = server.ldaps_url if mode == "ldaps" else server.url
    tls = {"ca_file": str(other.ca_cert), "start_tls": mode == "starttls"}
    with pytest.raises(SourceUnavailable, match="certificate verification failed") as caught:
        connector(tmp_path, server, url=url, tls=tls).count()
    assert caught.value.site == "ch-orange" and caught.value.url == url


def test_a_second_url_is_tried_when_the_first_is_down(tmp_path: Path, server: SlapdServer) -> None:
    from tests.servers.slapd import free_port

    dead = f"ldap://127.0.0.1:{free_port()}"
    assert connector(tmp_path, server, url=f"{dead} {server.url}").count() == 120


def test_unreachable_server(tmp_path: Path, server: SlapdServer) -> None:
    server.stop()
    with pytest.raises(SourceUnavailable, match=r"site ch-orange \(ldap://127.0.0.1:\d+\): cannot connect"):
        connector(tmp_path, server).count()


def test_wrong_password(tmp_path: Path, server: SlapdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GHT_TEST_BIND_PASSWORD", "wrong")
    with pytest.raises(SourceUnavailable, match="invalid credentials"):
        connector(tmp_path, server).count()


def test_a_server_that_stops_answering_times_out(tmp_path: Path, server: SlapdServer) -> None:
    with server.paused(), pytest.raises(SourceUnavailable, match=r"no answer within 1 s"):
        connector(tmp_path, server, timeout=1).count()


def test_a_search_cut_short_by_the_size_limit_is_an_incomplete_read(
    tmp_path: Path, server: SlapdServer
) -> None:
    reader = connector(tmp_path, server, bind_dn=server.limited_dn(SUFFIX), page_size=3)
    with pytest.raises(SourceReadIncomplete, match="sizeLimitExceeded"):
        list(reader.read_all())


def test_a_missing_base_dn_is_named(tmp_path: Path, server: SlapdServer) -> None:
    with pytest.raises(SourceUnavailable, match="base DN ou=nobody,dc=ch-orange,dc=fr does not exist"):
        connector(tmp_path, server, base_dn=f"ou=nobody,{SUFFIX}").count()


def test_entries_without_the_anchor_attribute_stop_the_read(tmp_path: Path, server: SlapdServer) -> None:
    with pytest.raises(SourceReadIncomplete, match="has no employeeNumber"):
        list(connector(tmp_path, server, anchor="employeeNumber").read_all())
