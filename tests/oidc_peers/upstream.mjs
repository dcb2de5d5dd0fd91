// npm oidc-provider configured to look like an upstream identity provider of the gateway, for
// tests/test_gateway_upstream.py: Pro Sante Connect (scope scope_all, acr eidas1, SubjectNameID and
// SubjectRefPro in userinfo) or Entra ID (oid, tid, preferred_username, employeeId in the ID token).
//
//   UPSTREAM_CONFIG='{"port":..., "kind":"psc"|"entra", "clients":[...], "accounts":{...}, "acr":..., "amr":[...]}' \
//     node tests/oidc_peers/upstream.mjs
//
// `clients`: [{client_id, client_secret, redirect_uris}] (client_secret_basic, PKCE required).
// `accounts`: login -> claims (with `sub`). The interaction is a one-field login form (label "Identifiant",
// button "Valider") that signs the account in with the configured `acr` and `amr`; consent is implicit.
// Loopback only. Prints one JSON line {"issuer": ...} when it listens.
// Test hook: `POST /__test__/tamper-nonce` makes the next ID token the token endpoint returns carry a wrong
// nonce (re-signed with the provider's key, so that only the nonce is wrong).
import { createServer } from 'node:http';
import { generateKeyPairSync, randomUUID, sign } from 'node:crypto';
import Provider from 'oidc-provider';

const conf = JSON.parse(process.env.UPSTREAM_CONFIG);
const issuer = `http://127.0.0.1:${conf.port}`;
const psc = conf.kind === 'psc';

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const kid = randomUUID();
const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };

const PSC_CLAIMS = ['SubjectNameID', 'SubjectRefPro', 'SubjectOrganization', 'family_name', 'given_name',
  'preferred_username'];
const ENTRA_CLAIMS = ['oid', 'tid', 'preferred_username', 'employeeId', 'name', 'family_name', 'given_name'];
const bySub = Object.fromEntries(Object.values(conf.accounts).map((claims) => [claims.sub, claims]));
const tamper = { nonce: false };

const provider = new Provider(issuer, {
  clients: conf.clients.map((c) => ({
    ...c,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: { keys: [jwk] },
  findAccount: (ctx, sub) => (bySub[sub] ? { accountId: sub, claims: () => ({ ...bySub[sub] }) } : undefined),
  claims: psc
    ? { acr: null, amr: null, openid: ['sub', 'acr', 'amr'], scope_all: PSC_CLAIMS }
    : { acr: null, amr: null, openid: ['sub', 'acr', 'amr'], profile: ENTRA_CLAIMS, email: ['email'] },
  scopes: psc ? ['openid', 'scope_all'] : ['openid', 'profile', 'email'],
  acrValues: conf.acr ? [conf.acr] : [],
  // Entra ID puts oid, tid... in the ID token; Pro Sante Connect's traits are read from userinfo.
  conformIdTokenClaims: psc,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: [randomUUID()] },
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.requestParamScopes ? [...ctx.oidc.requestParamScopes].join(' ') : 'openid');
    await grant.save();
    return grant;
  },
});

const b64url = (value) => Buffer.from(value).toString('base64url');

function resign(idToken, changes) {
  const [header, payload] = idToken.split('.');
  const claims = { ...JSON.parse(Buffer.from(payload, 'base64url').toString()), ...changes };
  const input = `${header}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`;
}

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token' && tamper.nonce && ctx.body && ctx.body.id_token) {
    tamper.nonce = false;
    ctx.body = { ...ctx.body, id_token: resign(ctx.body.id_token, { nonce: 'not-the-nonce-you-sent' }) };
  }
});

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(res, uid, error) {
  res.writeHead(error ? 401 : 200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>${psc ? 'Pro Santé Connect' : 'Entra ID'}</title></head>
<body><h1>${psc ? 'Pro Santé Connect (test)' : 'Entra ID (test)'}</h1>${error ? `<p role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}"><label for="login">Identifiant</label>
<input id="login" name="login" autofocus><button type="submit">Valider</button></form></body></html>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString());
}

const handler = provider.callback();

const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/__test__/tamper-nonce' && req.method === 'POST') {
      tamper.nonce = true;
      res.writeHead(204).end();
      return;
    }
    const match = url.pathname.match(/^\/interaction\/([^/]+)$/);
    if (!match) {
      handler(req, res);
      return;
    }
    const details = await provider.interactionDetails(req, res);
    if (req.method === 'GET') {
      loginPage(res, details.uid);
      return;
    }
    const form = await readForm(req);
    const account = conf.accounts[form.get('login') || ''];
    if (!account) {
      loginPage(res, details.uid, 'Identifiant inconnu');
      return;
    }
    const login = { accountId: account.sub, amr: conf.amr || undefined, acr: conf.acr || undefined };
    await provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
  } catch (error) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(`interaction failed: ${error.message}`);
  }
});

server.listen(Number(conf.port), '127.0.0.1', () => {
  console.log(JSON.stringify({ issuer }));
});
