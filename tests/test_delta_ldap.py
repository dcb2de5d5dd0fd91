"""Delta sync from OpenLDAP (syncrepl refreshOnly, RFC 4533) against a real slapd with syncprov.

As for Active Directory: the same hospital is synchronised by delta runs into one directory and by
full runs into another, and after each round of changes both must be the same. A cookie the server
cannot honour, a server without syncprov, or an anchor syncrepl cannot report all mean full reads,
and the run says so.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import ldap3
import pytest
import yaml
from pyasn1.codec.ber import encoder
from pyasn1.error import PyAsn1Error
from sqlalchemy import select, update
from sqlmodel import col

from directory_sync.config import Settings, load_settings
from directory_sync.connectors import open_connector
from directory_sync.connectors.ldap import LdapConnector
from directory_sync.connectors.syncrepl import (
    _SyncInfoValue,
    _SyncStateValue,
    decode_sync_info,
    decode_sync_state,
)
from directory_sync.correlate import PersonIndex
from directory_sync.pipeline import ReadingProcess
from directory_sync.reconcile import RunContext
from directory_sync.store import Account, SiteWatermark, Store, open_store
from directory_sync.sync import KeptRuns, ReadAhead, SiteResult, run_sync, sync_site
from tests.ad_sites import active_logins, assert_same_directory, password_file
from tests.hospitals import ldap_connection, person, rpps, suffix_ldif, write_config, write_site
from tests.servers.slapd import SlapdServer, Suffix

SITE = "ch-avignon"
SUFFIX = "dc=ch-avignon,dc=fr"
PEOPLE = f"ou=people,{SUFFIX}"
#: Staff who left keep their entry for a while with employeeType "parti": the site's filter skips them.
FILTER = "(&(objectClass=inetOrgPerson)(!(employeeType=parti)))"


@pytest.fixture
def avignon(tmp_path: Path, slapd_factory: Any) -> SlapdServer:
    staff = [
        person(SUFFIX, "jmartin", "MARTIN", "Jérôme", rpps=rpps(51), title="Praticien hospitalier"),
        person(SUFFIX, "mhdupont", "Dupont", "Marie-Hélène"),
        person(SUFFIX, "bmoreau", "Moreau", "Bruno", title="Infirmier"),
        person(SUFFIX, "cpetit", "Petit", "Claire"),
        person(SUFFIX, "dleroy", "Leroy", "David", title="Aide-soignante"),
        person(SUFFIX, "fgarnier", "Garnier", "Félix", title="Infirmier"),
        person(SUFFIX, "hblanc", "Blanc", "Hugo", title="Infirmier"),
        person(SUFFIX, "nlambert", "Lambert", "Noé", title="Infirmier"),
    ]
    returning = person(SUFFIX, "eroux", "Roux", "Emma")
    returning[1]["employeeType"] = "parti"
    server: SlapdServer = slapd_factory(
        [Suffix(SUFFIX, suffix_ldif(tmp_path / "avignon.ldif", SUFFIX, [*staff, returning]))]
    )
    with admin(server) as conn:
        conn.add(f"ou=former,{SUFFIX}", ["organizationalUnit"], {"ou": "former"})
    return server


def admin(server: SlapdServer) -> ldap3.Connection:
    return ldap3.Connection(
        server.url, server.root_dn(SUFFIX), server.root_password, auto_bind=True, raise_exceptions=True
    )


def configure(
    server: SlapdServer, directory: Path, database_url: str, **connection: Any
) -> tuple[Settings, Store]:
    directory.mkdir(parents=True, exist_ok=True)
    secret = password_file(directory, server.reader_password)  # read where the sync runs, when it runs
    connection = {"filter": FILTER, "bind_password": secret, **connection}
    write_site(directory, SITE, ldap_connection(server, SUFFIX, "UNUSED", **connection))
    return load_settings(write_config(directory, [SITE], database_url)), open_store(database_url)


def run(side: tuple[Settings, Store], *, full: bool = False) -> SiteResult:
    (result,) = run_sync(side[0], side[1], full=full, allow_closures=50)
    assert result.status == "succeeded", result.error
    return result


def test_delta_and_full_runs_give_the_same_directory(
    avignon: SlapdServer, tmp_path: Path, database_url: str
) -> None:
    delta = configure(avignon, tmp_path / "delta", database_url)
    full = configure(avignon, tmp_path / "full", f"sqlite:///{tmp_path}/full.db")
    first = run(delta)
    run(full, full=True)
    assert (first.mode, first.created) == ("full", 8)
    assert_same_directory(delta[1], full[1])

    with admin(avignon) as conn:
        conn.modify(f"uid=mhdupont,{PEOPLE}", {"title": [(ldap3.MODIFY_REPLACE, ["Cadre de santé"])]})
        conn.modify_dn(f"uid=bmoreau,{PEOPLE}", "uid=bruno.moreau")  # renamed: same entryUUID
        conn.modify_dn(
            f"uid=cpetit,{PEOPLE}", "uid=cpetit", new_superior=f"ou=former,{SUFFIX}"
        )  # out of scope
        conn.modify(
            f"uid=dleroy,{PEOPLE}", {"employeeType": [(ldap3.MODIFY_ADD, ["parti"])]}
        )  # out of the filter
        conn.modify(
            f"uid=eroux,{PEOPLE}", {"employeeType": [(ldap3.MODIFY_DELETE, [])]}
        )  # back in the filter
        conn.delete(f"uid=fgarnier,{PEOPLE}")
        dn, attributes = person(SUFFIX, "onouvel", "Nouvel", "Olivia", title="Sage-femme")
        conn.add(dn, attributes=attributes)
        conn.delete(f"uid=hblanc,{PEOPLE}")
        dn, attributes = person(SUFFIX, "hblanc", "Blanc", "Hugo", title="Infirmier")
        conn.add(dn, attributes=attributes)  # recreated: a new entryUUID

    second = run(delta)
    second_full = run(full, full=True)
    assert second.mode == "delta", second.mode_reason
    assert (second.unchanged, second_full.unchanged) == (0, 2)  # jmartin and nlambert were not read
    assert_same_directory(delta[1], full[1])
    assert active_logins(delta[1], SITE) == {
        "jmartin": "enabled",
        "mhdupont": "enabled",
        "bruno.moreau": "enabled",
        "eroux": "enabled",
        "onouvel": "enabled",
        "hblanc": "enabled",
        "nlambert": "enabled",
    }
    assert (second.closed, second.created) == (4, 3)  # cpetit, dleroy, fgarnier, the first hblanc

    third = run(delta)
    assert (third.mode, third.read, third.created, third.updated, third.closed) == ("delta", 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("cookie", "why"),
    [
        (b"rid=000,csn=20200101000000.000000Z#000000#000#000000", "no longer holds the changes"),
        (b"rid=000,sid=07b,csn=20991231000000.000000Z#000000#07b#000000", "no longer holds the changes"),
        (b"not a cookie", "no longer holds the changes"),
    ],
    ids=["expired", "another server's", "garbled"],
)
def test_a_cookie_the_server_cannot_honour_means_a_full_read_that_says_why(
    avignon: SlapdServer, tmp_path: Path, database_url: str, cookie: bytes, why: str
) -> None:
    side = configure(avignon, tmp_path, database_url)
    run(side)
    with side[1].session() as session:
        session.execute(
            update(SiteWatermark)
            .where(col(SiteWatermark.site) == SITE)
            .values(value=base64.b64encode(cookie).decode())
        )
        session.commit()
    with admin(avignon) as conn:
        conn.delete(f"uid=fgarnier,{PEOPLE}")

    result = run(side)
    assert result.mode == "full"
    assert why in (result.mode_reason or "")
    assert (result.closed, result.unchanged) == (1, 7)  # the full read still sees the deletion
    assert run(side).mode == "delta"


def test_a_dry_run_reads_the_delta_but_keeps_the_watermark(avignon: SlapdServer, tmp_path: Path) -> None:
    side = configure(avignon, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    run(side)
    with admin(avignon) as conn:
        conn.delete(f"uid=fgarnier,{PEOPLE}")
    (planned,) = run_sync(side[0], side[1], dry_run=True)
    assert (planned.mode, planned.closed) == ("delta", 1)
    applied = run(side)
    assert (applied.mode, applied.closed) == ("delta", 1)  # the dry run moved nothing


def test_a_server_without_syncprov_is_read_completely_every_time(tmp_path: Path, slapd_factory: Any) -> None:
    server = slapd_factory([SUFFIX], syncprov=False)
    side = configure(server, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    for _ in range(2):
        result = run(side)
        assert result.mode == "full"
        assert "does not offer syncrepl (no syncprov overlay" in (result.mode_reason or "")


def test_a_site_anchored_on_another_attribute_than_entryuuid_is_read_completely(
    avignon: SlapdServer, tmp_path: Path
) -> None:
    side = configure(avignon, tmp_path, f"sqlite:///{tmp_path}/ght.db", anchor="uid")
    run(side)
    result = run(side)
    assert result.mode == "full"
    assert "syncrepl reports deletions by entryUUID" in (result.mode_reason or "")


@pytest.mark.parametrize("state", ["present", "add", "modify", "delete"])
@pytest.mark.parametrize(
    "cookie", [None, b"", b"rid=000,csn=20261123120000.000000Z#000000#000#000000", b"x" * 300]
)
def test_sync_state_controls_decode_as_rfc_4533_defines_them(state: str, cookie: bytes | None) -> None:
    # Every delta entry carries one; they are read by hand, so check against pyasn1's BER encoding,
    # including a cookie long enough for the long form of a BER length.
    value = _SyncStateValue()
    value["state"] = state
    value["entryUUID"] = bytes(range(16))
    if cookie is not None:
        value["cookie"] = cookie
    assert decode_sync_state(encoder.encode(value)) == (state, bytes(range(16)), cookie)


@pytest.mark.parametrize(
    "garbled",
    [
        b"",
        b"\x30",
        b"\x31\x03\x0a\x01\x01",
        b"\x30\x03\x0a\x01\x07",
        b"\x30\x05\x0a\x01\x01\x04\x10",
        b"\x30\x85\x00",
    ],
)
def test_a_garbled_sync_state_control_is_refused(garbled: bytes) -> None:
    with pytest.raises(PyAsn1Error):
        decode_sync_state(garbled)


def _sync_info(choice: str, cookie: bytes | None, flag: bool | None, uuids: list[bytes]) -> bytes:
    """A Sync Info value as pyasn1 encodes it (the reference the hand decoder is checked against)."""
    info = _SyncInfoValue()
    if choice == "newcookie":
        info["newcookie"] = cookie or b""
        return bytes(encoder.encode(info))
    body = info.componentType[choice].asn1Object.clone()
    if cookie is not None:
        body["cookie"] = cookie
    if flag is not None:
        body["refreshDeletes" if choice == "syncIdSet" else "refreshDone"] = flag
    if choice == "syncIdSet":
        for n, raw in enumerate(uuids):
            body["syncUUIDs"][n] = raw
    info[choice] = body
    return bytes(encoder.encode(info))


@pytest.mark.parametrize(
    "cookie", [None, b"rid=000,csn=20261123120000.000000Z#000000#000#000000", b"c" * 300]
)
@pytest.mark.parametrize("flag", [None, True, False])
@pytest.mark.parametrize("choice", ["refreshDelete", "refreshPresent", "syncIdSet"])
def test_sync_info_messages_decode_as_rfc_4533_defines_them(
    choice: str, flag: bool | None, cookie: bytes | None
) -> None:
    # slapd reports deletions in them, often one message each: read by hand, checked against pyasn1.
    uuids = [bytes([n] * 16) for n in range(20)] if choice == "syncIdSet" else []
    default = choice != "syncIdSet"  # refreshDone defaults to TRUE, refreshDeletes to FALSE
    decoded = decode_sync_info(_sync_info(choice, cookie, flag, uuids))
    assert decoded == (choice, cookie, default if flag is None else flag, uuids)


def test_a_new_cookie_sync_info_decodes_to_its_cookie() -> None:
    assert decode_sync_info(_sync_info("newcookie", b"rid=001,csn=1", None, [])) == (
        "newcookie",
        b"rid=001,csn=1",
        False,
        [],
    )


@pytest.mark.parametrize(
    "garbled",
    [
        b"",
        b"\x84\x00",  # no such choice
        b"\xa3\x03\x04\x01x",  # a syncIdSet without its set of UUIDs
        b"\xa1\x03\x01\x02\x00\x00",  # a two-octet BOOLEAN
        b"\xa2\x02\x04\x05",  # a cookie running past the end
        b"\x80\x01xy",  # trailing octets
        b"\xa1\x03\x02\x01\x00",  # an INTEGER where none belongs
    ],
)
def test_a_garbled_sync_info_is_refused(garbled: bytes) -> None:
    with pytest.raises(PyAsn1Error):
        decode_sync_info(garbled)


def test_a_delta_closing_too_many_accounts_trips_the_threshold(avignon: SlapdServer, tmp_path: Path) -> None:
    settings, store = configure(avignon, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    (tmp_path / "mappings" / "correlation.yaml").write_text("safety:\n  min_accounts_for_percent: 5\n")
    settings = load_settings(tmp_path / "ght.toml")
    run((settings, store))
    with admin(avignon) as conn:
        conn.delete(f"uid=fgarnier,{PEOPLE}")
        conn.delete(f"uid=hblanc,{PEOPLE}")
    (stopped,) = run_sync(settings, store)
    assert (stopped.mode, stopped.status) == ("delta", "failed")
    assert "would close 2 of 8 accounts (25%), more than max_closure_percent = 10%" in (stopped.error or "")
    assert "hblanc" in active_logins(store, SITE)  # nothing applied, the watermark kept
    (applied,) = run_sync(settings, store, allow_closures=2)
    assert (applied.mode, applied.status, applied.closed) == ("delta", "succeeded", 2)
    assert "hblanc" not in active_logins(store, SITE)


# -- a delta's refresh sent ahead (while the site before is applied) ---------------------------------

ORANGE = "dc=ch-orange,dc=fr"


@pytest.fixture
def two_sites(tmp_path: Path, slapd_factory: Any) -> SlapdServer:
    """Avignon and Orange in one slapd (a database and a syncprov each)."""
    return slapd_factory(
        [
            Suffix(
                suffix,
                suffix_ldif(
                    tmp_path / f"{suffix[3:12]}.ldif",
                    suffix,
                    [person(suffix, uid, sn, given) for uid, sn, given in staff],
                ),
            )
            for suffix, staff in (
                (SUFFIX, [("mhdupont", "Dupont", "Marie-Hélène"), ("cpetit", "Petit", "Claire")]),
                (
                    ORANGE,
                    [("pgarcia", "Garcia", "Paul"), ("lfabre", "Fabre", "Léa"), ("tsimon", "Simon", "Tom")],
                ),
            )
        ]
    )


def configure_two(server: SlapdServer, directory: Path, database_url: str) -> tuple[Settings, Store]:
    directory.mkdir(parents=True, exist_ok=True)
    secret = password_file(directory, server.reader_password)
    for code, suffix in ((SITE, SUFFIX), ("ch-orange", ORANGE)):
        write_site(directory, code, ldap_connection(server, suffix, "UNUSED", bind_password=secret))
    return load_settings(write_config(directory, [SITE, "ch-orange"], database_url)), open_store(database_url)


def change_both(server: SlapdServer, round_: int) -> None:
    for suffix, uid in ((SUFFIX, "mhdupont"), (ORANGE, "pgarcia")):
        with ldap3.Connection(
            server.url, server.root_dn(suffix), server.root_password, auto_bind=True, raise_exceptions=True
        ) as conn:
            conn.modify(
                f"uid={uid},ou=people,{suffix}", {"ou": [(ldap3.MODIFY_REPLACE, [f"Service {round_}"])]}
            )
            dn, attributes = person(suffix, f"nouveau{round_}", "Nouveau", "Agent", title="Infirmier")
            conn.add(dn, attributes=attributes)
        if suffix == ORANGE:
            with ldap3.Connection(
                server.url,
                server.root_dn(suffix),
                server.root_password,
                auto_bind=True,
                raise_exceptions=True,
            ) as conn:
                conn.delete(f"uid={'lfabre' if round_ == 1 else 'tsimon'},ou=people,{suffix}")


def test_a_delta_sent_ahead_gives_the_same_directory_as_deltas_read_in_turn(
    two_sites: SlapdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[str] = []
    take = ReadAhead.take

    def counting_take(self: ReadAhead, session: Any, site: Any, *args: Any, **kwargs: Any) -> Any:
        reader = take(self, session, site, *args, **kwargs)
        if reader is not None:
            taken.append(site.code)
        return reader

    monkeypatch.setattr(ReadAhead, "take", counting_take)
    ahead = configure_two(two_sites, tmp_path / "ahead", f"sqlite:///{tmp_path}/ahead.db")
    in_turn = configure_two(two_sites, tmp_path / "in-turn", f"sqlite:///{tmp_path}/in-turn.db")
    run_sync(*ahead)
    with monkeypatch.context() as patched:
        patched.setattr(ReadAhead, "start", lambda self, site, *_, **options: None)
        run_sync(*in_turn)
    for round_ in (1, 2):
        change_both(two_sites, round_)
        taken.clear()
        results = run_sync(*ahead)
        assert [(r.mode, r.status) for r in results] == [("delta", "succeeded")] * 2
        # Both deltas were asked for as the run started, and read while the run went on.
        assert taken == [SITE, "ch-orange"]
        assert [(r.created, r.updated, r.closed) for r in results] == [(1, 1, 0), (1, 1, 1)]
        with monkeypatch.context() as patched:
            patched.setattr(ReadAhead, "start", lambda self, site, *_, **options: None)
            assert [r.mode for r in run_sync(*in_turn)] == ["delta", "delta"]
        assert_same_directory(ahead[1], in_turn[1])


def _sent_ahead(settings: Settings, store: Store, code: str) -> ReadAhead:
    ahead = ReadAhead(
        settings, store, ReadingProcess(settings.load_sites(), settings.professions), full=False
    )
    started = ahead.start(next(s for s in settings.load_sites() if s.code == code))
    assert started is not None and started.delta  # the delta was asked for
    return ahead


def _run_site(settings: Settings, store: Store, code: str, ahead: ReadAhead) -> SiteResult:
    with store.session() as session:
        context = RunContext.load(session, settings.correlation)
    site = next(s for s in settings.load_sites() if s.code == code)
    result = sync_site(site, settings, store, context, ahead=ahead)
    assert result.status == "succeeded", result.error
    return result


def test_a_delta_sent_ahead_is_dropped_when_another_run_of_the_site_came_in_between(
    two_sites: SlapdServer, tmp_path: Path
) -> None:
    """That run applied the same changes and newer ones, and moved the watermark: applying the answer
    sent ahead after it would take the directory back. The site is read again from the new watermark."""
    settings, store = configure_two(two_sites, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    run_sync(settings, store)
    change_both(two_sites, 1)
    ahead = _sent_ahead(settings, store, "ch-orange")
    change_both(two_sites, 2)
    (other,) = run_sync(settings, store, sites=["ch-orange"])  # another host's run, say
    assert (other.mode, other.created, other.closed) == ("delta", 2, 2)

    result = _run_site(settings, store, "ch-orange", ahead)
    assert (result.mode, result.read) == ("delta", 0)  # not the changes sent ahead again
    assert active_logins(store, "ch-orange") == {
        "pgarcia": "enabled",
        "nouveau1": "enabled",
        "nouveau2": "enabled",
    }


def test_a_delta_asked_for_after_the_others_leaves_theirs_for_their_turn(
    two_sites: SlapdServer, tmp_path: Path
) -> None:
    """Both sites' deltas are asked for as a run starts; Avignon's is dropped (another run of it came in
    between) and asked for again, after Orange's: Orange's answer, read on the way, is kept for it."""
    settings, store = configure_two(two_sites, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    run_sync(settings, store)
    change_both(two_sites, 1)
    ahead = ReadAhead(
        settings, store, ReadingProcess(settings.load_sites(), settings.professions), full=False
    )
    ahead.start_run(settings.load_sites())
    (other,) = run_sync(settings, store, sites=[SITE])  # another host's run of Avignon, say
    assert (other.mode, other.created) == ("delta", 1)
    change_both(two_sites, 2)

    avignon = _run_site(settings, store, SITE, ahead)  # read again, from the newer watermark
    assert (avignon.mode, avignon.created, avignon.updated) == ("delta", 1, 1)
    orange = _run_site(settings, store, "ch-orange", ahead)  # the answer asked for at the start
    assert (orange.mode, orange.created, orange.closed) == ("delta", 1, 1)
    assert active_logins(store, "ch-orange") == {
        "pgarcia": "enabled",
        "nouveau1": "enabled",
        "tsimon": "enabled",
    }
    ahead.reading.close()


# -- a scheduler's runs (`ght sync run --every`): what is kept from one run to the next --------------


def _departments(store: Store, site: str) -> dict[str, str]:
    with store.session() as session:
        rows = session.execute(select(Account.login, Account.attributes).where(col(Account.site) == site))
        return {login: attributes.get("department", "") for login, attributes in rows}


def test_a_scheduler_keeps_its_reading_process_and_sees_an_edited_mapping(
    two_sites: SlapdServer, tmp_path: Path
) -> None:
    """The reading process is forked once and serves the following runs; when a mapping file is
    edited, the next run reads with the new mapping (a process that knew the old one is replaced)."""
    settings, _ = configure_two(two_sites, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    with KeptRuns() as kept:
        assert [r.mode for r in kept.run(settings)] == ["full", "full"]
        worker = kept.reading._worker
        assert worker is not None and worker.is_alive()
        change_both(two_sites, 1)
        settings = load_settings(tmp_path / "ght.toml")  # as the scheduler does before every run
        results = kept.run(settings)
        assert [(r.mode, r.created, r.updated) for r in results] == [("delta", 1, 1), ("delta", 1, 1)]
        assert kept.reading._worker is worker  # the same process read both runs
        assert _departments(kept.store(settings.database_url), SITE)["mhdupont"] == "Service 1"

        mapping = tmp_path / "mappings" / f"{SITE}.yaml"
        document = yaml.safe_load(mapping.read_text(encoding="utf-8"))
        document["attributes"]["department"] = {"from": "ou", "transforms": ["lower"]}
        mapping.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        change_both(two_sites, 2)
        settings = load_settings(tmp_path / "ght.toml")
        # Avignon's mapping changed: its watermark no longer holds (see `delta.mapping_scope`).
        assert [r.mode for r in kept.run(settings)] == ["full", "delta"]
        assert kept.reading._worker is not worker  # the mapping changed: a new reading process
        assert _departments(kept.store(settings.database_url), SITE)["mhdupont"] == "service 2"


def test_a_schedulers_bound_connection_lost_to_a_server_restart_is_replaced(
    two_sites: SlapdServer, tmp_path: Path
) -> None:
    """Between runs the reading process keeps each site's delta connection bound. After slapd restarted
    (every connection closed), the next run opens new ones and reads the changes: nothing is lost, and
    the directory is the one a fresh run gives."""
    settings, _ = configure_two(two_sites, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    fresh = configure_two(two_sites, tmp_path / "fresh", f"sqlite:///{tmp_path}/fresh.db")
    with KeptRuns() as kept:
        kept.run(settings)
        run_sync(*fresh)
        change_both(two_sites, 1)
        assert [r.mode for r in kept.run(settings)] == ["delta", "delta"]
        worker = kept.reading._worker
        two_sites.stop()
        two_sites.start()
        change_both(two_sites, 2)
        results = kept.run(settings)
        assert [(r.mode, r.status, r.created, r.closed) for r in results] == [
            ("delta", "succeeded", 1, 0),
            ("delta", "succeeded", 1, 1),
        ]
        assert kept.reading._worker is worker
        # (full: slapd's session log started empty, it cannot answer the fresh side's older cookie)
        assert all(r.ok for r in run_sync(*fresh))
        assert_same_directory(kept.store(settings.database_url), fresh[1])
    assert worker is not None and not worker.is_alive()  # ended with the scheduler


@pytest.mark.parametrize("lookups_in", [None, "sqlite:////nonexistent/ght.db"], ids=["ahead", "nowhere"])
def test_a_schedulers_deltas_are_looked_up_by_its_reading_process_or_else_by_the_run(
    two_sites: SlapdServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lookups_in: str | None,
    database_url: str,
) -> None:
    """A scheduler's reading process looks each delta up in the directory (SQLite or PostgreSQL), and
    the run merges what it found. When that process cannot open the directory, the run looks the
    deltas up on its own: either way the directory is the one a run without a scheduler gives."""
    settings, _ = configure_two(two_sites, tmp_path, database_url)
    fresh = configure_two(two_sites, tmp_path / "fresh", f"sqlite:///{tmp_path}/fresh.db")
    with KeptRuns() as kept:
        kept.run(settings)
        run_sync(*fresh)
        if lookups_in is not None:
            original = ReadAhead.__init__

            def pointing_nowhere(self: ReadAhead, *args: Any, **options: Any) -> None:
                original(self, *args, **options)
                self._lookups_in = lookups_in

            monkeypatch.setattr(ReadAhead, "__init__", pointing_nowhere)
        absorbed: list[Any] = []
        monkeypatch.setattr(PersonIndex, "absorb", _recording(PersonIndex.absorb, absorbed))
        change_both(two_sites, 1)
        results = kept.run(settings)
        assert [(r.mode, r.status, r.created) for r in results] == [("delta", "succeeded", 1)] * 2
        assert bool(absorbed) == (lookups_in is None)
        assert [r.mode for r in run_sync(*fresh)] == ["delta", "delta"]
        assert_same_directory(kept.store(settings.database_url), fresh[1])


def _recording(method: Any, calls: list[Any]) -> Any:
    def recorded(self: Any, *args: Any) -> Any:
        calls.append(args)
        return method(self, *args)

    return recorded


def test_a_connector_keeping_its_connection_reads_its_deltas_on_it(
    avignon: SlapdServer, tmp_path: Path
) -> None:
    settings, _ = configure(avignon, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    connector = open_connector(settings.load_sites()[0])
    assert isinstance(connector, LdapConnector)
    connector.keep_connection = True
    list(connector.read_all())
    since = connector.watermark
    assert since is not None
    list(connector.read_changes(since))
    kept = connector._kept
    assert kept is not None and kept.bound
    with admin(avignon) as conn:
        conn.modify(f"uid=cpetit,{PEOPLE}", {"ou": [(ldap3.MODIFY_REPLACE, ["Pédiatrie"])]})
    changed = list(connector.read_changes(since))
    assert [r.anchor for r in changed] and all(r.attributes.get("ou") == ["Pédiatrie"] for r in changed)
    assert connector._kept is kept  # the same bound connection, not a new bind
    connector.close()
    assert connector._kept is None and kept.closed
