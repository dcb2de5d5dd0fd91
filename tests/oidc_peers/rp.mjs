// An independent relying party (npm openid-client 6) against the gateway: discovery, code + PKCE,
// ID token validation against the JWKS, userinfo, refresh, introspection, revocation, client credentials.
// The sign-in form is filled with fetch, like a browser without JavaScript. Prints one JSON object.
import * as client from 'openid-client';

const env = JSON.parse(process.env.RP_CONFIG);
const jar = new Map();

async function browse(url, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (jar.size) headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const response = await fetch(url, { ...init, headers, redirect: 'manual' });
  for (const cookie of response.headers.getSetCookie()) {
    const [pair] = cookie.split(';');
    const at = pair.indexOf('=');
    jar.set(pair.slice(0, at), pair.slice(at + 1));
  }
  return response;
}

function field(html, name) {
  const match = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  return match ? match[1] : undefined;
}

async function signIn(authorizationUrl) {
  let response = await browse(authorizationUrl);
  while (response.status === 303 || response.status === 302) {
    const next = new URL(response.headers.get('location'), env.issuer);
    if (next.href.startsWith(env.redirect_uri)) return next;
    response = await browse(next.href);
  }
  const html = await response.text();
  const action = new URL(html.match(/<form method="post" action="([^"]+)"/)[1].replaceAll('&amp;', '&'), env.issuer);
  const body = new URLSearchParams({ csrf_token: field(html, 'csrf_token'), login: env.login, password: env.password });
  response = await browse(action.href, {
    method: 'POST', body, headers: { 'content-type': 'application/x-www-form-urlencoded' },
  });
  while (response.status === 303 || response.status === 302) {
    const next = new URL(response.headers.get('location'), env.issuer);
    if (next.href.startsWith(env.redirect_uri)) return next;
    response = await browse(next.href);
  }
  throw new Error(`sign-in did not come back to the application: ${response.status} ${await response.text()}`);
}

const result = {};
const config = await client.discovery(
  new URL(env.issuer), env.client_id, undefined, client.ClientSecretBasic(env.client_secret), {
  execute: [client.allowInsecureRequests],
});
result.issuer = config.serverMetadata().issuer;

const verifier = client.randomPKCECodeVerifier();
const state = client.randomState();
const nonce = client.randomNonce();
const url = client.buildAuthorizationUrl(config, {
  redirect_uri: env.redirect_uri,
  scope: 'openid profile email health',
  code_challenge: await client.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  state,
  nonce,
});
const callback = await signIn(url.href);
result.callback_has_iss = callback.searchParams.get('iss') === env.issuer;
const tokens = await client.authorizationCodeGrant(config, callback, {
  pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true,
});
const claims = tokens.claims();
result.id_token = { sub: claims.sub, aud: claims.aud, current_site: claims.current_site, sid: claims.sid };
result.userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);

const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
result.refresh_rotated = refreshed.refresh_token !== tokens.refresh_token;
result.introspection_active = (await client.tokenIntrospection(config, refreshed.access_token)).active;
await client.tokenRevocation(config, refreshed.refresh_token);
result.introspection_after_revocation = (await client.tokenIntrospection(config, refreshed.access_token)).active;
try {
  await client.refreshTokenGrant(config, tokens.refresh_token);
  result.old_refresh_refused = false;
} catch (error) {
  result.old_refresh_refused = error.error === 'invalid_grant';
}

const service = await client.discovery(
  new URL(env.issuer), env.cc_client_id, undefined, client.ClientSecretBasic(env.cc_client_secret), {
  execute: [client.allowInsecureRequests],
});
const machine = await client.clientCredentialsGrant(service, { scope: 'openid' });
result.client_credentials = { token_type: machine.token_type, has_refresh: 'refresh_token' in machine };
result.client_credentials_introspection = await client.tokenIntrospection(service, machine.access_token);

process.stdout.write(JSON.stringify(result));
