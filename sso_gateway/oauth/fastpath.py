"""The refresh grant's common case: on PostgreSQL, answered on the event loop in two statements.

A refresh grant through Authlib (grants.py) runs in a worker thread on an ORM session: five round trips
(`BEGIN`, the read, the claim, the insert, `COMMIT`), the thread hop and the ORM's bookkeeping cost about
three quarters of the grant (py-spy, benchmarks/README.md). Here, for a request that will succeed:

1. the token, its grant and the person's status are read in one statement (autocommit);
2. the new access token is signed (CPU, on the event loop: no thread hop);
3. one statement claims the old refresh token and records the new tokens, atomically:
   `WITH claimed AS (UPDATE ... WHERE rotated_at IS NULL AND revoked_at IS NULL AND <grant stands and
   person active> RETURNING 1) INSERT ... SELECT ... WHERE EXISTS (SELECT 1 FROM claimed)`.

Everything it checks is checked as Authlib's path checks it (client authentication by the method the
client registered, grant type, token kind, client, expiry, rotation, revocation, grant, person; the
client registration and signing keys are read again when this process's copies are older than their
few seconds, as there). Any request this path is not sure to answer with a 200 -- an unknown client, a
wrong secret or method, a `scope` parameter, a used, revoked or expired token, a suspended person -- is
handed back (None) to Authlib's path unchanged, which answers it with its own error body and side
effects: a reused refresh token revokes its grant there.
Nothing is written before the final statement, so handing a request back has no effect. A claim lost to
a concurrent use of the same token (0 rows) is handed back too: Authlib's path then finds the token
rotated, which is a reuse, and revokes the grant.

Connections: a small pool of psycopg `AsyncConnection`s per worker process and event loop, in
autocommit mode (each statement is its own transaction; prepared on the server).

SQLite (no asynchronous driver): the same checks and statements through the DB-API, on a connection of
the event loop's own that never waits for a lock (`busy_timeout=0`): the read, the signing, then
`BEGIN IMMEDIATE`, the claim (`UPDATE ... WHERE rotated_at IS NULL AND revoked_at IS NULL AND <grant
stands and person active>`) and the insert. While another connection holds the write lock, the claim
is tried again after a few milliseconds, then made in a worker thread that waits for the lock (a sync
writing); a read that finds the database busy is handed back to Authlib's path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import anyio
import anyio.to_thread

from directory_sync.store import Person, PersonStatus, sa_table, utcnow

from ..clients import Client, hash_secret
from ..models import Grant, IssuedToken
from ..sessions import aware, digest
from .requests import OAuthResponse
from .tokens import ACCESS, REFRESH, AuthenticatedUser, epoch

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .server import GatewayAuthorizationServer

#: Connections per worker process: the statements are short, PostgreSQL shares the machine's cores.
POOL_SIZE = 4
#: SQLite grants at once per worker process (see `_sqlite_limiter`).
SQLITE_THREADS = 1
ACTIVE_STATUSES = (PersonStatus.ACTIVE.value, PersonStatus.EXTERNAL.value)
TOKEN_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache")]

_T, _G, _P = sa_table(IssuedToken).name, sa_table(Grant).name, sa_table(Person).name
_READ = (
    f"SELECT t.kind, t.client_id, t.scope, t.expires_at, t.revoked_at, t.rotated_at, "
    f"g.id, g.person_id, g.revoked_at, g.sid, g.current_site, g.auth_time, g.amr, g.acr, p.status "
    f"FROM {_T} t LEFT JOIN {_G} g ON g.id = t.grant_id LEFT JOIN {_P} p ON p.id = g.person_id "
    f"WHERE t.token_hash = %s"
)
_COLUMNS = "token_hash, kind, grant_id, client_id, person_id, scope, jti, issued_at, expires_at"
_ROW = (
    "(%s::varchar, %s::varchar, %s::varchar, %s::varchar, %s::varchar, %s::varchar, %s::varchar, "
    "%s::timestamptz, %s::timestamptz)"
)
_CLAIM_AND_INSERT = (
    f"WITH claimed AS ("
    f"UPDATE {_T} SET rotated_at = %s "
    f"WHERE token_hash = %s AND rotated_at IS NULL AND revoked_at IS NULL AND EXISTS ("
    f"SELECT 1 FROM {_G} g JOIN {_P} p ON p.id = g.person_id "
    f"WHERE g.id = %s AND g.revoked_at IS NULL AND p.status IN {ACTIVE_STATUSES!r}"
    f") RETURNING 1) "
    f"INSERT INTO {_T} ({_COLUMNS}) SELECT * FROM (VALUES {_ROW}, {_ROW}) AS v({_COLUMNS}) "
    f"WHERE EXISTS (SELECT 1 FROM claimed)"
)


log = logging.getLogger(__name__)
_t = sa_table(IssuedToken)
#: The same two steps for SQLite, as DB-API statements: SQLAlchemy's execution machinery (contexts,
#: parameter and result processing) cost more than SQLite's own work for these one-row statements. The
#: columns' own processors convert the values that need it (`_SQLiteValues`), so what is stored is what
#: SQLAlchemy would store.
_SQLITE_READ = _READ.replace("%s", "?")
_SQLITE_CLAIM = (
    f"UPDATE {_T} SET rotated_at = ? "
    f"WHERE token_hash = ? AND rotated_at IS NULL AND revoked_at IS NULL AND EXISTS ("
    f"SELECT 1 FROM {_G} g JOIN {_P} p ON p.id = g.person_id "
    f"WHERE g.id = ? AND g.revoked_at IS NULL AND p.status IN {ACTIVE_STATUSES!r})"
)
_SQLITE_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)"
_SQLITE_INSERT = f"INSERT INTO {_T} ({_COLUMNS}, revoked_at, rotated_at) VALUES {_SQLITE_ROW}, {_SQLITE_ROW}"


class _SQLiteValues:
    """The processors SQLAlchemy applies to the fast path's SQLite values (datetimes as text, JSON)."""

    def __init__(self, dialect: Any) -> None:
        def processors(column: Any) -> tuple[Any, Any]:
            impl = column.type.dialect_impl(dialect)
            return impl.bind_processor(dialect) or _same, impl.result_processor(dialect, None) or _same

        self.datetime_in, self.datetime_out = processors(_t.c.expires_at)
        self.json_out = processors(sa_table(Grant).c.amr)[1]

    def row(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        """A row of `_SQLITE_READ` as the Core statement would give it."""
        row = list(raw)
        for i in (3, 4, 5, 8, 11):  # expires_at, revoked_at, rotated_at, the grant's revoked_at, auth_time
            if row[i] is not None:
                row[i] = self.datetime_out(row[i])
        row[12] = self.json_out(row[12]) if row[12] is not None else None  # amr
        return tuple(row)


def _same(value: Any) -> Any:
    return value


class _Issued(dict[str, Any]):
    """A token response, with the `jti` of its access token (recorded with its digest)."""

    def __init__(self, token: dict[str, Any], jti: str) -> None:
        super().__init__(token)
        self.jti = jti


#: Commits of an event loop's SQLite connection between two checkpoints of the write-ahead log (a
#: refresh writes a few pages: about the 10,000 pages after which the store's connections checkpoint).
CHECKPOINT_EVERY = 2_000
#: Pauses between the loop's attempts at the write lock, before waiting for it in a thread. The other
#: worker process holds it for a refresh's two statements (tens of microseconds): a thread waiting on
#: SQLite's busy handler sleeps whole milliseconds, one grant at a time (p95 470 ms under load).
LOOP_RETRY_PAUSES = (0, 0.0005, 0.001, 0.002, 0.004, 0.008)


def _sqlite_claim(raw: Any, params: tuple[Any, ...]) -> bool:
    """Claim the old refresh token and record the new tokens, in one transaction; False (nothing
    written) if the claim found nothing to claim. The write lock is taken first: on the loop's
    connection (`busy_timeout=0`) a busy database raises at once, before anything is done."""
    try:
        raw.execute("BEGIN IMMEDIATE")
        if raw.execute(_SQLITE_CLAIM, params[:3]).rowcount != 1:
            raw.rollback()
            return False
        raw.execute(_SQLITE_INSERT, params[3:])
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    return True


class _Pool:
    """At most `size` autocommit connections, opened when first needed, on one event loop."""

    def __init__(self, conninfo: str, size: int) -> None:
        self.conninfo = conninfo
        self.idle: list[AsyncConnection[Any]] = []
        self.slots = asyncio.Semaphore(size)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        from psycopg import AsyncConnection

        async with self.slots:
            conn = self.idle.pop() if self.idle else None
            if conn is None or conn.closed:
                conn = await AsyncConnection.connect(self.conninfo, autocommit=True)
            try:
                yield conn
            except BaseException:
                await _close_quietly(conn)  # broken, or cancelled mid-statement: never reused
                raise
            self.idle.append(conn)


async def _close_quietly(conn: AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception):  # already broken: nothing more to do
        await conn.close()


class RefreshFastPath:
    """See the module's docstring: PostgreSQL through psycopg 3, or SQLite."""

    def __init__(self, server: GatewayAuthorizationServer) -> None:
        self.server = server
        url = server.store.engine.url
        self.postgres = url.get_backend_name() == "postgresql" and url.get_driver_name() == "psycopg"
        self.sqlite = url.get_backend_name() == "sqlite"
        self.enabled = self.postgres or self.sqlite
        self.conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pools: dict[int, _Pool] = {}
        self._limiters: dict[int, anyio.CapacityLimiter] = {}
        self._sqlite_values: _SQLiteValues | None = None
        #: (event loop id, its SQLite connection), commits since the last checkpoint (`_loop_connection`).
        self._sqlite_loop: tuple[int, Any] | None = None
        self._loop_commits = 0
        self._checkpointing = False

    def _sqlite_limiter(self) -> anyio.CapacityLimiter:
        """One SQLite grant at a time per process and event loop: threads of one process writing at
        once only wait on each other's lock, and on the GIL while holding it."""
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(id(loop))
        if limiter is None:
            self._limiters.clear()
            limiter = self._limiters[id(loop)] = anyio.CapacityLimiter(SQLITE_THREADS)
        return limiter

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(id(loop))
        if pool is None:  # one per event loop (a test client runs several, one after the other)
            self._pools.clear()
            pool = self._pools[id(loop)] = _Pool(self.conninfo, POOL_SIZE)
        return pool

    async def client(self, form: Mapping[str, str], headers: Mapping[str, str]) -> Client | None:
        """The client, if it authenticates as Authlib would accept it (client_secret_basic, else
        client_secret_post); else None. Its registration is read again (in a worker thread) when this
        process's copy is older than CLIENT_CACHE_SECONDS, as Authlib's path would."""
        server = self.server
        authorization = headers.get("Authorization") or headers.get("authorization")
        if authorization:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() != "basic":
                return None
            try:
                decoded = base64.b64decode(credentials.strip()).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            client_id, colon, secret = decoded.partition(":")
            client_id, secret, method = unquote(client_id), unquote(secret), "client_secret_basic"
            if not colon:
                return None
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
            method = "client_secret_post"
        if not client_id or not secret:
            return None
        record = server.cached_client(client_id)
        if record is None:
            found = await anyio.to_thread.run_sync(server.query_client, client_id)
            record = found.record if found is not None else None
        if record is None or record.secret_hash is None or record.public:
            return None
        if not hmac.compare_digest(record.secret_hash, hash_secret(secret)):
            return None
        if record.token_endpoint_auth_method != method or "refresh_token" not in record.grant_types:
            return None
        return Client(record)

    async def refresh(
        self, form: Mapping[str, str], headers: Mapping[str, str], query: Mapping[str, str]
    ) -> OAuthResponse | None:
        """The token response of a refresh grant that succeeds, or None: Authlib's path answers it."""
        server = self.server
        refresh_token = form.get("refresh_token")
        if (
            not self.enabled
            or form.get("grant_type") != "refresh_token"
            or not refresh_token
            or query
            or "scope" in form
            or "client_assertion" in form
            or "client_assertion_type" in form
        ):
            return None
        if not server.keys.fresh():  # read again every few seconds (keys.py): in a worker thread
            await anyio.to_thread.run_sync(server.keys.signing_key)
        client = await self.client(form, headers)
        if client is None:
            return None
        old_hash = digest(refresh_token)
        if self.sqlite:
            return await self._sqlite_refresh(client, old_hash)
        # One connection for the read and the claim (the signing between them is CPU on this loop).
        async with self._pool().connection() as conn:
            cursor = await conn.execute(_READ, (old_hash,), prepare=True)
            row = await cursor.fetchone()
            token = self._issue(client, row) if row is not None else None
            if token is None:
                return None
            params = self._claim(old_hash, token, row, client.client_id)
            cursor = await conn.execute(_CLAIM_AND_INSERT, params, prepare=True)
            if cursor.rowcount != 2:
                return None  # used, revoked or suspended meanwhile: Authlib's path finds out which
        return OAuthResponse(200, token, list(TOKEN_HEADERS))

    async def _sqlite_refresh(self, client: Client, old_hash: str) -> OAuthResponse | None:
        """The SQLite variant: on this event loop's own connection while the database's write lock is
        free (no thread hop), else in a worker thread that waits for the lock (`_sqlite_pooled_claim`)."""
        if self._sqlite_values is None:
            self._sqlite_values = _SQLiteValues(self.server.store.engine.dialect)
        own = self._loop_connection()
        try:
            found = own.execute(_SQLITE_READ, (old_hash,)).fetchone()
        except sqlite3.OperationalError:  # busy (rare in WAL mode): Authlib's path reads in a thread
            return None
        issued = self._issue(client, self._sqlite_values.row(found)) if found is not None else None
        if issued is None:
            return None
        params = self._sqlite_params(old_hash, issued, found, client.client_id)
        claimed = None
        for pause in LOOP_RETRY_PAUSES:
            try:
                claimed = _sqlite_claim(own, params)
            except sqlite3.OperationalError:  # another connection holds the write lock
                await asyncio.sleep(pause)  # the other worker's few statements, or a longer write
                continue
            self._after_loop_commit()
            break
        if claimed is None:  # a long write (a sync): wait for it in a thread
            claimed = await anyio.to_thread.run_sync(
                self._sqlite_pooled_claim, params, limiter=self._sqlite_limiter()
            )
        if not claimed:
            return None  # used, revoked or suspended meanwhile: Authlib's path finds out which
        return OAuthResponse(200, issued, list(TOKEN_HEADERS))

    def _loop_connection(self) -> Any:
        """This event loop's SQLite connection: it never waits for a lock (`busy_timeout=0`: a busy
        database is handed to a thread) and never checkpoints inside a commit (`_after_loop_commit`)."""
        loop = asyncio.get_running_loop()
        if self._sqlite_loop is None or self._sqlite_loop[0] != id(loop):
            if self._sqlite_loop is not None:
                self._sqlite_loop[1].close()
            fairy = self.server.store.engine.raw_connection()
            fairy.detach()  # this loop's for good: out of the pool
            fairy.execute("PRAGMA busy_timeout=0")
            fairy.execute("PRAGMA wal_autocheckpoint=0")
            self._sqlite_loop = (id(loop), fairy)
            self._loop_commits = 0
        return self._sqlite_loop[1]

    def _after_loop_commit(self) -> None:
        """Every CHECKPOINT_EVERY commits of the loop's connection, its write-ahead log is checkpointed
        in a thread (PASSIVE: never waits for a writer, never blocks a reader), not on the loop."""
        self._loop_commits += 1
        if self._loop_commits >= CHECKPOINT_EVERY and not self._checkpointing:
            self._loop_commits = 0
            self._checkpointing = True
            asyncio.get_running_loop().run_in_executor(None, self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            raw = self.server.store.engine.raw_connection()
            try:
                raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                raw.close()
        except Exception as exc:  # the next one will try again; the commits are not affected
            log.warning("refresh fast path: checkpoint failed: %s", exc)
        finally:
            self._checkpointing = False

    def _sqlite_pooled_claim(self, params: tuple[Any, ...]) -> bool:
        raw = self.server.store.engine.raw_connection()
        try:
            return _sqlite_claim(raw, params)
        finally:
            raw.close()

    def _sqlite_params(self, old_hash: str, token: _Issued, row: Any, client_id: str) -> tuple[Any, ...]:
        """`_claim`'s parameters, datetimes as SQLAlchemy stores them in SQLite."""
        assert self._sqlite_values is not None
        return self._claim(old_hash, token, row, client_id, self._sqlite_values.datetime_in)

    def _issue(self, client: Client, row: Any) -> _Issued | None:
        """The token response for the token read (`row`), if Authlib's path would issue one."""
        (kind, client_id, scope, expires_at, revoked_at, rotated_at, grant_id, person_id, grant_revoked_at,
         sid, current_site, auth_time, amr, acr, status) = row  # fmt: skip
        if (
            kind != REFRESH
            or client_id != client.client_id
            or revoked_at is not None
            or rotated_at is not None  # a reuse: Authlib's path revokes the grant
            or aware(expires_at) <= utcnow()
            or grant_id is None
            or grant_revoked_at is not None
            or person_id is None
            or status not in ACTIVE_STATUSES
        ):
            return None
        user = AuthenticatedUser(
            person_id=person_id,
            sid=sid,
            auth_time=epoch(auth_time),
            amr=list(amr or []),
            current_site=current_site,
            grant_id=grant_id,
            acr=acr,
        )
        jti = secrets.token_urlsafe(16)
        return _Issued(
            self.server.token_factory(
                grant_type="refresh_token",
                client=client,
                user=user,
                scope=scope,
                include_refresh_token=True,
                jti=jti,
            ),
            jti,
        )

    def _claim(
        self, old_hash: str, token: _Issued, row: Any, client_id: str, when: Any = _same
    ) -> tuple[Any, ...]:
        """The parameters of _CLAIM_AND_INSERT: the old token's claim, the new tokens' rows.
        `when`: how the datetimes are passed (SQLite: as SQLAlchemy stores them)."""
        grant_id, person_id = row[6], row[7]
        now = utcnow()
        issued = when(now)
        access_expires = when(now + timedelta(seconds=int(token["expires_in"])))
        refresh_expires = when(now + timedelta(seconds=self.server.settings.refresh_token_lifetime))
        common = (grant_id, client_id, person_id, token.get("scope", ""))
        return (
            issued, old_hash, grant_id,
            digest(token["access_token"]), ACCESS, *common, token.jti, issued, access_expires,
            digest(token["refresh_token"]), REFRESH, *common, None, issued, refresh_expires,
        )  # fmt: skip
