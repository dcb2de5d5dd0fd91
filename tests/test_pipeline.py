"""Reading sites in the run's reading process: the next site read while the current one is applied,
and a read started ahead used only while it is still the read the run would start."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from directory_sync import sync
from directory_sync.config import Settings, load_settings
from directory_sync.delta import Watermark
from directory_sync.errors import SourceReadIncomplete
from directory_sync.pipeline import MappedReader, ReadingProcess
from directory_sync.store import RunStatus, open_store
from directory_sync.synthetic import generate
from tests.ad_sites import differences, directory_snapshot


def synthetic_ght(directory: Path, database: str = "ght.db", accounts: int = 900) -> Settings:
    """Three synthetic hospitals as LDIF exports (read completely at every run: no watermark)."""
    directory.mkdir(parents=True, exist_ok=True)
    ght = generate(seed=7, sites=3, accounts=accounts)
    for spec in ght.sites:
        ght.write_ldif(spec.code, directory / f"{spec.code}.ldif")
    ght.write_mappings(
        directory / "mappings",
        lambda spec: {"kind": "ldif", "path": str(directory / f"{spec.code}.ldif"), "anchor": "entryUUID"},
    )
    (directory / "mappings" / "codes").mkdir(exist_ok=True)
    g15 = Path(__file__).resolve().parents[1] / "mappings" / "codes" / "g15.yaml"
    (directory / "mappings" / "codes" / "g15.yaml").write_text(g15.read_text())
    (directory / "ght.toml").write_text(
        f'database_url = "sqlite:///{directory / database}"\nmappings_dir = "mappings"\n'
        f"sites = {json.dumps([s.code for s in ght.sites])}\n"
    )
    return load_settings(directory / "ght.toml")


def test_sites_read_ahead_give_the_same_directory_as_sites_read_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[str] = []
    take = sync.ReadAhead.take

    def counting_take(self: sync.ReadAhead, session: Any, site: Any, *args: Any, **kwargs: Any) -> Any:
        reader = take(self, session, site, *args, **kwargs)
        if reader is not None:
            taken.append(site.code)
        return reader

    monkeypatch.setattr(sync.ReadAhead, "take", counting_take)
    ahead = synthetic_ght(tmp_path / "ahead")
    ahead_store = open_store(ahead.database_url)
    results = sync.run_sync(ahead, ahead_store)
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 3
    assert taken == [r.site for r in results]  # every site was read ahead (the first as the run began)

    monkeypatch.setattr(sync.ReadAhead, "start", lambda self, site, *_, **options: None)
    in_turn = synthetic_ght(tmp_path / "in-turn")
    in_turn_store = open_store(in_turn.database_url)
    sync.run_sync(in_turn, in_turn_store)
    assert differences(directory_snapshot(ahead_store), directory_snapshot(in_turn_store)) == []
    assert sum(r.read for r in results) == 900


def test_a_read_started_ahead_is_dropped_when_another_run_of_the_site_came_in_between(
    tmp_path: Path,
) -> None:
    """Another run of the site (another host) may have read a newer state of the source than the read
    started ahead: applying ours after it would put the directory back. The site is read again."""
    settings = synthetic_ght(tmp_path)
    store = open_store(settings.database_url)
    sites = settings.load_sites()
    site = sites[1]
    reading = ReadingProcess(sites, settings.professions)
    ahead = sync.ReadAhead(settings, store, reading, full=False)
    try:
        ahead.start(site)
        with store.session() as session:
            reader = ahead.take(session, site, None, since=None)
        assert reader is not None
        accounts = list(reader.read_all())
        assert len(accounts) == len({a.anchor for a in accounts}) > 0
        assert {a.site for a in accounts} == {site.code}

        ahead.start(site)
        other = sync._start_run(store, site.code)  # another host's run of the site, meanwhile
        ours = sync._start_run(store, site.code)
        with store.session() as session:
            assert ahead.take(session, site, ours, since=None) is None
            assert other < ours
            # and what the dropped read sends is not mistaken for the next read's
            again = MappedReader(site, settings.professions, reading)
            assert sorted(a.anchor for a in again.read_all()) == sorted(a.anchor for a in accounts)

        ahead.start(site)
        with store.session() as session:  # the site's turn came as a delta after all: not this read
            delta = Watermark(kind="syncrepl", source="elsewhere", value="Y29va2ll")
            assert ahead.take(session, site, ours, since=delta) is None
    finally:
        ahead.close()
        reading.close()


def test_a_read_abandoned_midway_does_not_leak_into_the_next(tmp_path: Path) -> None:
    settings = synthetic_ght(tmp_path)
    sites = settings.load_sites()
    reading = ReadingProcess(sites, settings.professions)
    try:
        first = MappedReader(sites[0], settings.professions, reading).read_all()
        next(first)  # the planner failed after the first account: the rest of the read is not wanted
        first.close()
        second = list(MappedReader(sites[2], settings.professions, reading).read_all())
        assert second and {a.site for a in second} == {sites[2].code}
    finally:
        reading.close()


def test_a_reading_process_that_dies_fails_its_read_clearly_and_the_next_read_gets_a_new_one(
    tmp_path: Path,
) -> None:
    settings = synthetic_ght(tmp_path, accounts=12_000)  # more than the pipe holds: the read is under way
    sites = settings.load_sites()
    reading = ReadingProcess(sites, settings.professions)
    try:
        accounts = MappedReader(sites[0], settings.professions, reading).read_all()
        next(accounts)
        worker = reading._worker
        assert worker is not None and worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)  # the OOM killer, or an operator
        with pytest.raises(SourceReadIncomplete, match="the reading process died"):
            list(accounts)
        again = list(MappedReader(sites[1], settings.professions, reading).read_all())
        assert again and {a.site for a in again} == {sites[1].code}
    finally:
        reading.close()
