"""The Graph client against the fake: paging, `$batch`, throttling with Retry-After, back-off, giving up;
and the fake's own fidelity on the points the export relies on."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from directory_sync.azure import GraphUnavailable
from directory_sync.azure.graph import GraphClient, SubRequest, WriteLimiter, retry_after_seconds
from tests.servers.graph_fake import Faults
from tests.test_azure_support import DOMAIN, World, azure_world, small_ght


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with azure_world(tmp_path) as w:
        yield w


def new_user(n: int, **extra: object) -> dict[str, object]:
    return {
        "accountEnabled": True,
        "displayName": f"User {n}",
        "mailNickname": f"user{n}",
        "userPrincipalName": f"user{n}@{DOMAIN}",
        "passwordProfile": {"password": "Aa1!aaaaaaaa", "forceChangePasswordNextSignIn": True},
        **extra,
    }


def test_listing_follows_next_links_with_the_largest_page(world: World) -> None:
    for n in range(2100):
        world.fake.add_user(**new_user(n, employeeId=f"E{n}"))
    with world.client() as client:
        users = list(client.pages("/users?$select=id,employeeId&$top=999"))
        assert client.stats.requests == 3
    assert len(users) == 2100 and len({u["id"] for u in users}) == 2100
    assert set(users[0]) == {"id", "employeeId"}


def test_batches_hold_at_most_20_requests_and_answers_are_matched_by_id(world: World) -> None:
    with world.client() as client:
        requests = [SubRequest("POST", "/users", new_user(n), tag=n) for n in range(45)]
        requests.append(SubRequest("POST", "/users", new_user(0), tag="again"))  # a duplicate UPN
        answers = [pair for envelope in client.batch(requests) for pair in envelope]
        assert client.stats.requests == 3
    assert world.fake.stats.largest_batch == 20
    by_tag = {sub.tag: answer for sub, answer in answers}
    assert all(
        by_tag[n].status == 201 and by_tag[n].body["userPrincipalName"] == f"user{n}@{DOMAIN}"
        for n in range(45)
    )
    assert by_tag["again"].status == 400
    assert by_tag["again"].error_message == (
        "Another object with the same value for property userPrincipalName already exists."
    )


def test_a_write_quota_is_honoured_with_retry_after_and_the_rate_adapts(tmp_path: Path) -> None:
    """Started at five times the tenant's quota (30 writes per second), the client is throttled, waits
    as told, and comes down instead of living on 429s."""
    with azure_world(tmp_path, write_quota=(60, 2.0)) as world:
        world.configure(write_rate=150.0)
        for n in range(150):
            world.hire("ch-apt", f"agent{n}", f"Agent{n:03d}", "Claude", title="Infirmière")
        world.sync()
        with world.client() as client:
            result = world.push(client=client)
            assert result.rejected == [] and result.unfinished == 0
            assert 0 < result.stats.throttled < result.stats.writes / 3
            assert client.limiter.rate < 75.0
        assert world.fake.stats.throttled == result.stats.throttled
        world.assert_tenant_is_the_directory()


def sliding_window_tenant(
    quota: int, window: float, start_rate: float, envelopes: int
) -> tuple[WriteLimiter, int]:
    """The limiter against a simulated tenant (a sliding-window write quota reporting its usage past
    80%, like the fake), on a simulated clock: (the limiter, 429s received)."""
    now = [0.0]
    limiter = WriteLimiter(start_rate, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    accepted: list[float] = []
    refused = 0
    for _ in range(envelopes):
        limiter.acquire(20)
        ok, usage, retry = 0, None, None
        for _ in range(20):
            accepted[:] = [t for t in accepted if t > now[0] - window]
            if len(accepted) >= quota:
                refused += 1
                retry = max(1.0, accepted[0] + window - now[0])
                continue
            accepted.append(now[0])
            ok += 1
            if len(accepted) / quota >= 0.8:
                usage = max(usage or 0.0, len(accepted) / quota)
        if ok:
            limiter.on_accepted(usage, ok)
        if retry is not None:
            limiter.on_throttled(retry)
    return limiter, refused


def test_the_write_limiter_settles_just_under_a_quota_it_is_never_told() -> None:
    for start in (5.0, 20.0, 500.0):  # far under, at Entra's documented rate, far over
        limiter, refused = sliding_window_tenant(quota=300, window=3.0, start_rate=start, envelopes=600)
        assert 88.0 < limiter.rate <= 100.0, start  # the quota is 100 writes per second
        assert refused <= 60, start  # a few refused envelopes while learning, then none


def test_the_write_limiter_paces_cuts_once_per_burst_and_pauses_for_retry_after() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = WriteLimiter(10.0, clock=lambda: now[0], sleep=sleep)
    limiter.acquire(20)
    limiter.acquire(20)
    assert slept == [2.0]  # 20 writes at 10 per second
    limiter.on_accepted(None, 40)
    assert limiter.rate == pytest.approx(11.0)  # no signal yet: slow start
    limiter.on_throttled(5.0)
    cut = limiter.rate
    assert 11.0 * 0.5 <= cut <= 11.0 * 0.9
    limiter.on_throttled(5.0)  # the same burst of refusals cuts once
    assert limiter.rate == cut
    slept.clear()
    limiter.acquire(1)
    assert slept and now[0] >= 7.0  # nobody writes before Retry-After


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after_seconds({"retry-after": later}) or 0) <= 30
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "86400"}) == 300.0


def test_back_off_is_exponential_with_full_jitter(world: World) -> None:
    settings = world.settings
    assert settings.azure is not None
    client = GraphClient(
        settings.azure.model_copy(update={"retry_base": 1.0}), world.client().tokens, rng=random.Random(1)
    )
    for attempt in range(8):
        delays = [client._backoff(attempt) for _ in range(200)]
        assert all(0 <= d <= min(30.0, 2.0**attempt) for d in delays)
        assert max(delays) > 0.5 * min(30.0, 2.0**attempt)  # spread over the whole range
    client.close()


def test_a_graph_that_keeps_failing_is_given_up_and_nothing_more_is_sent(world: World) -> None:
    world.configure(max_retries=2)
    small_ght(world)
    world.fake.faults = Faults(rate=1.0, kinds=("503",), retry_after=0)
    with world.client() as client:
        with pytest.raises(GraphUnavailable, match="Microsoft Graph is not answering"):
            world.push(client=client)
        calls = world.fake.stats.graph_requests
        assert calls == 3  # the first call and two retries
        with pytest.raises(GraphUnavailable):
            client.get("/users")
        assert world.fake.stats.graph_requests == calls


def test_groups_larger_than_a_page_are_read_and_kept_exactly_in_step(world: World) -> None:
    small_ght(world)
    strangers = [world.fake.add_user(**new_user(n))["id"] for n in range(1200)]
    group = world.fake.add_group("Orange (old)", "ght-site-ch-orange", members=tuple(strangers))
    result = world.push()
    assert world.group("site:ch-orange")["id"] == group["id"]  # found by mailNickname, not duplicated
    assert result.groups_created == 6 and result.members_removed == 1200
    assert world.members("site:ch-orange") == {
        "helene.lefevre@ght-test.fr",
        "paul.garcia@ght-test.fr",
        "marie.dupont@ght-test.fr",
    }
    world.assert_tenant_is_the_directory(others=1200)

    someone = strangers[0]  # added by hand later: `--full` reads the members again and removes them
    world.fake.members[group["id"]][someone] = None
    assert world.push().members_removed == 0
    assert world.push(full=True).members_removed == 1
    assert someone not in world.fake.member_ids(group["id"])


def test_the_fake_is_as_strict_as_graph(world: World) -> None:
    with world.client() as client:
        too_many = client.request(
            "POST",
            "/$batch",
            {"requests": [{"id": str(n), "method": "GET", "url": "/users"} for n in range(21)]},
        )
        assert too_many.status == 400
        assert client.request("GET", "/users?$top=1000").error_message == (
            "Invalid page size specified: '1000'. Must be between 1 and 999 inclusive."
        )
        created = client.request("POST", "/users", new_user(1, employeeId="E1"))
        assert created.status == 201
        default = client.get(f"/users/{created.body['id']}")
        assert "employeeId" not in default  # Graph's default projection: $select is needed
        missing = new_user(2)
        del missing["passwordProfile"]
        assert client.request("POST", "/users", missing).error_message == (
            "A value is required for property 'passwordProfile' of resource 'User'."
        )
        long_id = client.request("POST", "/users", new_user(3, employeeId="x" * 17))
        assert (
            long_id.error_message == "Invalid value specified for property 'employeeId' of resource 'User'."
        )
        weak = new_user(4, passwordProfile={"password": "password"})
        assert "password complexity" in client.request("POST", "/users", weak).error_message
        unsupported = client.request("GET", "/users?$filter=jobTitle%20eq%20'x'")
        assert (unsupported.status, unsupported.error_code) == (400, "Request_UnsupportedQuery")
