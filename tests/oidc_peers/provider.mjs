// npm oidc-provider configured like the gateway, for benchmarks/gateway_grants.py.
//
//   node tests/oidc_peers/provider.mjs PORT CLIENT_ID CLIENT_SECRET
//
// RS256 (a fresh RSA-2048 key), JWT access tokens (RFC 9068, through resource indicators), a confidential
// client authenticating with client_secret_basic, client credentials, refresh tokens with rotation. Loopback
// only. Prints one JSON line {"issuer": ...} when it listens. `POST /bench/refresh-tokens?n=N` (loopback,
// benchmark only) mints N refresh tokens (each with its own grant), as N completed authorization-code flows
// would have left behind; the refresh grants themselves then go through the real token endpoint.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, clientId, clientSecret] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const RESOURCE = 'urn:ght:bench';

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
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
  console.log(JSON.stringify({ issuer }));
});
