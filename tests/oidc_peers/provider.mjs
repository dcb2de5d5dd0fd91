// npm oidc-provider configured like the gateway, for benchmarks/gateway_grants.py.
//
//   node tests/oidc_peers/provider.mjs PORT CLIENT_ID CLIENT_SECRET [POSTGRES_URL]
//
// Without POSTGRES_URL: oidc-provider's development in-memory adapter (no database at all). With it: every
// model (grants, refresh tokens, access tokens, ...) is stored in PostgreSQL through the `pg` package (a pool
// of 8 connections, one table `oidc_model`), as a deployment whose processes share their state must, and as
// the gateway does; a refresh grant then reads and writes there (find, consume, upsert).
//
// RS256 (a fresh RSA-2048 key), JWT access tokens (RFC 9068, through resource indicators), a confidential
// client authenticating with client_secret_basic, client credentials, refresh tokens with rotation. Loopback
// only. Prints one JSON line {"issuer": ...} when it listens. `POST /bench/refresh-tokens?n=N` (loopback,
// benchmark only) mints N refresh tokens (each with its own grant), as N completed authorization-code flows
// would have left behind; the refresh grants themselves then go through the real token endpoint.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, databaseUrl] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const RESOURCE = 'urn:ght:bench';

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

// oidc-provider's adapter interface (one instance per model name), on PostgreSQL.
let adapter;
if (databaseUrl) {
  const { default: pg } = await import('pg');
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 8 });
  await pool.query(`CREATE TABLE IF NOT EXISTS oidc_model (
    name text NOT NULL, id text NOT NULL, payload jsonb NOT NULL, grant_id text, user_code text, uid text,
    expires_at timestamptz, consumed_at timestamptz, PRIMARY KEY (name, id))`);
  await pool.query('CREATE INDEX IF NOT EXISTS oidc_model_grant ON oidc_model (grant_id)');
  await pool.query('CREATE INDEX IF NOT EXISTS oidc_model_uid ON oidc_model (uid)');
  await pool.query('CREATE INDEX IF NOT EXISTS oidc_model_user_code ON oidc_model (user_code)');
  const live = 'AND (expires_at IS NULL OR expires_at > now())';
  const found = (rows) => {
    if (!rows.length) return undefined;
    const [{ payload, consumed }] = rows;
    return consumed ? { ...payload, consumed } : payload;
  };
  const select = 'SELECT payload, extract(epoch FROM consumed_at)::int AS consumed FROM oidc_model';
  adapter = class PostgresAdapter {
    constructor(name) {
      this.name = name;
    }

    async upsert(id, payload, expiresIn) {
      await pool.query(
        `INSERT INTO oidc_model (name, id, payload, grant_id, user_code, uid, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7::int IS NULL THEN NULL
                                              ELSE now() + make_interval(secs => $7::int) END)
         ON CONFLICT (name, id) DO UPDATE SET payload = excluded.payload, grant_id = excluded.grant_id,
           user_code = excluded.user_code, uid = excluded.uid, expires_at = excluded.expires_at`,
        [this.name, id, payload, payload.grantId ?? null, payload.userCode ?? null, payload.uid ?? null,
          expiresIn ?? null],
      );
    }

    async find(id) {
      return found((await pool.query(`${select} WHERE name = $1 AND id = $2 ${live}`, [this.name, id])).rows);
    }

    async findByUid(uid) {
      return found((await pool.query(`${select} WHERE name = $1 AND uid = $2 ${live}`, [this.name, uid])).rows);
    }

    async findByUserCode(code) {
      const { rows } = await pool.query(`${select} WHERE name = $1 AND user_code = $2 ${live}`, [this.name, code]);
      return found(rows);
    }

    async consume(id) {
      await pool.query('UPDATE oidc_model SET consumed_at = now() WHERE name = $1 AND id = $2', [this.name, id]);
    }

    async destroy(id) {
      await pool.query('DELETE FROM oidc_model WHERE name = $1 AND id = $2', [this.name, id]);
    }

    async revokeByGrantId(grantId) {
      await pool.query('DELETE FROM oidc_model WHERE grant_id = $1', [grantId]);
    }
  };
}

const provider = new Provider(issuer, {
  ...(adapter ? { adapter } : {}),
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials', 'refresh_token', 'authorization_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/cb'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [jwk] },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
  scopes: ['openid', 'offline_access', 'api'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: clientId,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 300,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  rotateRefreshToken: true,
  ttl: { RefreshToken: 30 * 24 * 3600, ClientCredentials: 300, AccessToken: 300, Grant: 30 * 24 * 3600 },
});

provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/bench/refresh-tokens') {
    const n = Number(ctx.query.n || 64);
    const client = await provider.Client.find(clientId);
    const tokens = [];
    for (let i = 0; i < n; i += 1) {
      const accountId = `person-${i}`;
      const grant = new provider.Grant({ accountId, clientId });
      grant.addResourceScope(RESOURCE, 'api');
      grant.addOIDCScope('offline_access');
      const grantId = await grant.save();
      const token = new provider.RefreshToken({
        accountId,
        client,
        grantId,
        gty: 'authorization_code',
        scope: 'offline_access api',
        resource: RESOURCE,
        authTime: Math.floor(Date.now() / 1000),
      });
      tokens.push(await token.save());
    }
    ctx.body = { refresh_tokens: tokens };
    return;
  }
  await next();
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(JSON.stringify({ issuer, adapter: adapter ? 'postgresql' : 'memory' }));
});
