// Hostile OpenID provider for enforcer's rejection tests: it publishes ordinary discovery and
// JWKS documents but signs ID tokens the way an attacker or a broken IdP would.
//
// Usage: node hostile.mjs
// It listens on 127.0.0.1 on a random port and prints {"issuer": "...", "port": N}.
// POST /admin/mode with a JSON body {"mode": "..."} selects the next ID tokens' defect:
//   valid                 a correct RS256 token
//   alg_none              header alg "none" and an empty signature
//   hs256_public_key      HS256 keyed with the provider's public key (PEM)
//   wrong_audience        aud is another client
//   issuer_trailing_slash iss is the issuer followed by "/"
//   expired               exp and iat one hour in the past
//   old_auth_time         auth_time one hour before the authorization request
//   missing_nonce         no nonce claim
//   wrong_nonce           a nonce that was never sent
//   unknown_key           signed with a key the JWKS does not list yet; the next JWKS request
//                         publishes it
//   unpublished_key       signed with a key the JWKS never lists
// The authorization endpoint redirects at once with a code; the token endpoint checks the
// client secret, the code (single use) and the PKCE S256 verifier as a real provider does.

import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import { SignJWT, exportJWK, exportSPKI, generateKeyPair } from 'jose';

const CLIENT_ID = 'enforcer';
const CLIENT_SECRET = 'hostile-client-secret';

async function newKey(kid) {
  const { publicKey, privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' };
  return { kid, publicKey, privateKey, jwk, pem: await exportSPKI(publicKey) };
}

const published = [await newKey('published-1')];
let pendingKey = null;
const neverPublished = await newKey('never-published');
let mode = 'valid';
const codes = new Map();

function base64url(data) {
  return Buffer.from(data).toString('base64url');
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function basicCredentials(req) {
  const header = req.headers.authorization ?? '';
  if (!header.startsWith('Basic ')) return [null, null];
  const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return [decodeURIComponent(decoded.slice(0, colon)), decodeURIComponent(decoded.slice(colon + 1))];
}

async function idToken(issuer, grant) {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: issuer,
    sub: 'mallory',
    aud: CLIENT_ID,
    iat: now,
    exp: now + 600,
    auth_time: now,
    nonce: grant.nonce,
    email: 'mallory@example.com',
    email_verified: true,
    groups: ['eng'],
    amr: ['pwd'],
  };
  let key = published[0];
  switch (mode) {
    case 'wrong_audience': claims.aud = 'another-client'; break;
    case 'issuer_trailing_slash': claims.iss = `${issuer}/`; break;
    case 'expired': claims.iat = now - 3600; claims.exp = now - 3000; break;
    case 'old_auth_time': claims.auth_time = grant.requestedAt - 3600; break;
    case 'missing_nonce': delete claims.nonce; break;
    case 'wrong_nonce': claims.nonce = base64url(randomBytes(16)); break;
    // An account that set another user's address without proving it.
    case 'unverified_email': claims.email = 'alice@example.com'; claims.email_verified = false; break;
    case 'email_verified_missing': claims.email = 'alice@example.com'; delete claims.email_verified; break;
    case 'unknown_key':
      pendingKey = pendingKey ?? (await newKey(`rotated-${published.length + 1}`));
      key = pendingKey;
      break;
    case 'unpublished_key': key = neverPublished; break;
    default: break;
  }

  if (mode === 'alg_none') {
    const header = base64url(JSON.stringify({ alg: 'none', typ: 'JWT' }));
    return `${header}.${base64url(JSON.stringify(claims))}.`;
  }
  if (mode === 'hs256_public_key') {
    return new SignJWT(claims)
      .setProtectedHeader({ alg: 'HS256', kid: published[0].kid })
      .sign(new TextEncoder().encode(published[0].pem));
  }
  return new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: key.kid }).sign(key.privateKey);
}

async function handle(issuer, req, res) {
  const url = new URL(req.url, issuer);
  if (req.method === 'GET' && url.pathname === '/.well-known/openid-configuration') {
    sendJson(res, 200, {
      issuer,
      authorization_endpoint: `${issuer}/authorize`,
      token_endpoint: `${issuer}/token`,
      jwks_uri: `${issuer}/jwks`,
      response_types_supported: ['code'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: ['RS256'],
      code_challenge_methods_supported: ['S256'],
    });
    return;
  }
  if (req.method === 'GET' && url.pathname === '/jwks') {
    if (pendingKey) {
      published.push(pendingKey);
      pendingKey = null;
    }
    sendJson(res, 200, { keys: published.map((key) => key.jwk) });
    return;
  }
  if (req.method === 'POST' && url.pathname === '/admin/mode') {
    mode = JSON.parse(await readBody(req)).mode;
    sendJson(res, 200, { mode });
    return;
  }
  if (req.method === 'GET' && url.pathname === '/authorize') {
    const params = url.searchParams;
    if (params.get('client_id') !== CLIENT_ID || params.get('code_challenge_method') !== 'S256') {
      sendJson(res, 400, { error: 'invalid_request' });
      return;
    }
    const code = base64url(randomBytes(24));
    codes.set(code, {
      nonce: params.get('nonce'),
      challenge: params.get('code_challenge'),
      redirectUri: params.get('redirect_uri'),
      requestedAt: Math.floor(Date.now() / 1000),
    });
    const location = new URL(params.get('redirect_uri'));
    location.searchParams.set('code', code);
    location.searchParams.set('state', params.get('state'));
    res.writeHead(302, { location: location.toString() });
    res.end();
    return;
  }
  if (req.method === 'POST' && url.pathname === '/token') {
    const [clientId, secret] = basicCredentials(req);
    if (clientId !== CLIENT_ID || secret !== CLIENT_SECRET) {
      sendJson(res, 401, { error: 'invalid_client' });
      return;
    }
    const form = new URLSearchParams(await readBody(req));
    const grant = codes.get(form.get('code'));
    codes.delete(form.get('code'));
    const verifier = form.get('code_verifier') ?? '';
    const challenge = createHash('sha256').update(verifier).digest('base64url');
    if (!grant || grant.challenge !== challenge || grant.redirectUri !== form.get('redirect_uri')) {
      sendJson(res, 400, { error: 'invalid_grant' });
      return;
    }
    sendJson(res, 200, {
      access_token: base64url(randomBytes(24)),
      token_type: 'Bearer',
      expires_in: 600,
      id_token: await idToken(issuer, grant),
    });
    return;
  }
  sendJson(res, 404, { error: 'not_found' });
}

const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  server.on('request', (req, res) => {
    handle(issuer, req, res).catch((err) => {
      console.error(`request ${req.url} failed: ${err.stack ?? err}`);
      if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    });
  });
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});
