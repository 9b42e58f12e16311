// OpenID provider for enforcer's tests, built on the certified `oidc-provider` package.
//
// Usage: node provider.mjs CONFIG.json
// It listens on IDP_HOST (default 127.0.0.1) and IDP_PORT (default 0, a random port) and
// prints one JSON line to stdout,
// {"issuer": "...", "port": N}, once it accepts connections. CONFIG.json holds:
//   clients:  oidc-provider client metadata (client_id, client_secret, redirect_uris, ...)
//   accounts: { "<login>": { password, otp?, email, groups: [...] } }
// The login page requires the one-time code when the request includes the MFA acr value
// and records amr ["pwd", "otp"] when it was given, else ["pwd"].

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

export const ACR_PASSWORD = 'urn:enforcer:acr:pwd';
export const ACR_MFA = 'urn:enforcer:acr:mfa';

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node provider.mjs CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const accounts = config.accounts ?? {};

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16 * 1024) throw new Error('form body larger than 16 KiB');
    chunks.push(chunk);
  }
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
}

function wantsMfa(params) {
  return String(params.acr_values ?? '').split(' ').includes(ACR_MFA);
}

function loginPage(uid, params, error) {
  const otp = wantsMfa(params)
    ? '<label>One-time code <input name="otp" id="otp" autocomplete="off"></label>'
    : '';
  const message = error ? `<p class="error" id="error">${escapeHtml(error)}</p>` : '';
  return `<!doctype html><html><head><meta charset="utf-8"><title>Test IdP sign-in</title></head>
<body><h1>Sign in to the test identity provider</h1>${message}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" id="login-form">
<label>Login <input name="login" id="login" autocomplete="username"></label>
<label>Password <input name="password" id="password" type="password"></label>
${otp}
<button type="submit" id="submit">Sign in</button></form></body></html>`;
}

function sendHtml(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(body);
}

async function handleInteraction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    sendHtml(res, 400, 'interaction does not match the cookie');
    return;
  }
  if (details.prompt.name !== 'login') {
    // Consent is granted by loadExistingGrant, so only the login prompt reaches this page.
    sendHtml(res, 400, `unexpected prompt ${escapeHtml(details.prompt.name)}`);
    return;
  }
  if (req.method === 'GET') {
    sendHtml(res, 200, loginPage(uid, details.params));
    return;
  }
  if (req.method !== 'POST' || action !== 'login') {
    sendHtml(res, 405, 'method not allowed');
    return;
  }

  const form = await readForm(req);
  const account = accounts[form.login];
  if (!account || account.password !== form.password) {
    sendHtml(res, 200, loginPage(uid, details.params, 'invalid login or password'));
    return;
  }
  const mfa = Boolean(account.otp) && form.otp === account.otp;
  if (wantsMfa(details.params) && !mfa) {
    sendHtml(res, 200, loginPage(uid, details.params, 'invalid one-time code'));
    return;
  }
  const result = {
    login: {
      accountId: form.login,
      amr: mfa ? ['pwd', 'otp'] : ['pwd'],
      acr: mfa ? ACR_MFA : ACR_PASSWORD,
    },
  };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

const server = createServer();
const host = process.env.IDP_HOST ?? '127.0.0.1';
server.listen(Number(process.env.IDP_PORT ?? 0), host, () => {
  const { port } = server.address();
  const issuer = `http://${host}:${port}`;
  const provider = new Provider(issuer, {
    clients: config.clients,
    cookies: { keys: [randomBytes(32).toString('hex')] },
    acrValues: [ACR_PASSWORD, ACR_MFA],
    claims: {
      // amr and acr go into every ID token, so the gateway can check step-up sign-ins.
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    scopes: ['openid', 'email', 'groups', 'offline_access'],
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      // The claims parameter lets a test ask for groups in the ID token itself.
      claimsParameter: { enabled: true },
    },
    // Put the requested claims in the ID token, as many enterprise IdPs do, so the gateway
    // needs no userinfo request.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 60,
      DeviceCode: 120,
      IdToken: 600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        ?? ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const existing = await ctx.oidc.provider.Grant.find(grantId);
        if (existing) return existing;
      }
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email groups');
      grant.addOIDCClaims(['email', 'email_verified', 'groups']);
      await grant.save();
      return grant;
    },
    async findAccount(ctx, id) {
      const account = accounts[id];
      if (!account) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: account.email,
            email_verified: true,
            groups: account.groups ?? [],
          };
        },
      };
    },
  });

  const callback = provider.callback();
  server.on('request', (req, res) => {
    const match = /^\/interaction\/([^/?]+)(?:\/([a-z]+))?/.exec(req.url ?? '');
    if (!match) {
      callback(req, res);
      return;
    }
    handleInteraction(provider, req, res, match[1], match[2]).catch((err) => {
      console.error(`interaction ${match[1]} failed: ${err.stack ?? err}`);
      if (!res.headersSent) sendHtml(res, 400, escapeHtml(err.message ?? String(err)));
    });
  });
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});
