// A real OpenID Connect provider for forwardauth's tests: panva's oidc-provider
// (a certified implementation) on loopback, with a tiny interaction handler that
// lets a test choose who signs in and which acr is achieved, including a LOWER
// acr than the one asked for.
//
// Test-only. It binds 127.0.0.1 and nothing else, and never loads anything
// from another address (its pages have no external resources).
//
// Start: `node provider.mjs` with settings in the environment, or as
// `--name value` / `--name=value` arguments (`--redirect-uris` sets
// REDIRECT_URIS). See README.md in this folder for every setting and the
// test-control endpoints.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider, { errors, interactionPolicy } from 'oidc-provider';

// ---------------------------------------------------------------- settings

function argvSettings(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (!arg.startsWith('--')) {
      throw new Error(`unexpected argument ${arg}`);
    }
    let name = arg.slice(2);
    let value;
    const eq = name.indexOf('=');
    if (eq !== -1) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    } else {
      value = argv[i + 1];
      i += 1;
      if (value === undefined) throw new Error(`missing value for --${name}`);
    }
    out[name.toUpperCase().replaceAll('-', '_')] = value;
  }
  return out;
}

const settings = { ...process.env, ...argvSettings(process.argv.slice(2)) };

function list(value) {
  if (value === undefined || value === '') return [];
  const trimmed = value.trim();
  if (trimmed.startsWith('[')) {
    const parsed = JSON.parse(trimmed);
    if (!Array.isArray(parsed) || !parsed.every((v) => typeof v === 'string')) {
      throw new Error(`expected a JSON array of strings: ${value}`);
    }
    return parsed;
  }
  return trimmed.split(',').map((v) => v.trim()).filter(Boolean);
}

function flag(value, dflt) {
  if (value === undefined || value === '') return dflt;
  return !['0', 'false', 'no', 'off'].includes(String(value).toLowerCase());
}

const HOST = '127.0.0.1';
const PORT = Number.parseInt(settings.PORT ?? '', 10);
if (!Number.isInteger(PORT) || PORT <= 0 || PORT > 65535) {
  throw new Error('PORT must be set to a TCP port (1-65535)');
}
const ISSUER = settings.ISSUER || `http://${HOST}:${PORT}`;
const CLIENT_ID = settings.CLIENT_ID || 'forwardauth';
const CLIENT_SECRET = settings.CLIENT_SECRET || 'forwardauth-test-secret';
const REDIRECT_URIS = list(settings.REDIRECT_URIS);
const POST_LOGOUT_REDIRECT_URIS = list(settings.POST_LOGOUT_REDIRECT_URIS);
const TOKEN_ENDPOINT_AUTH_METHOD = settings.TOKEN_ENDPOINT_AUTH_METHOD || 'client_secret_basic';
const ID_TOKEN_ALG = settings.ID_TOKEN_SIGNED_RESPONSE_ALG || 'RS256';
const ID_TOKEN_TTL = Number.parseInt(settings.ID_TOKEN_TTL || '3600', 10);
const EXTRA_CLIENTS = settings.EXTRA_CLIENTS ? JSON.parse(settings.EXTRA_CLIENTS) : [];
const ACR_VALUES = settings.ACR_VALUES ? list(settings.ACR_VALUES) : [
  'urn:forwardauth:acr:password',
  'urn:forwardauth:acr:mfa',
  'urn:forwardauth:acr:hardware',
];
// When true (default), a request whose acr_values the SSO session does not
// meet starts a new login (as Keycloak, Auth0 and most providers do). When
// false, oidc-provider's stock behaviour: acr_values is only a wish, and an
// existing session answers with the acr it has.
const STEP_UP_ON_ACR_VALUES = flag(settings.STEP_UP_ON_ACR_VALUES, true);
const LOGOUT_AUTO_CONFIRM = flag(settings.LOGOUT_AUTO_CONFIRM, true);
const KEYS_FILE = settings.KEYS_FILE || '';
const COOKIE_KEYS = settings.COOKIE_KEYS
  ? list(settings.COOKIE_KEYS)
  : [crypto.randomBytes(32).toString('base64url'), crypto.randomBytes(32).toString('base64url')];

if (REDIRECT_URIS.length === 0) {
  throw new Error('REDIRECT_URIS must list at least one redirect URI (JSON array or comma list)');
}

// ---------------------------------------------------------------- keys

function generateKeys() {
  const keys = [];
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  for (const pair of [rsa, ec]) {
    const jwk = pair.privateKey.export({ format: 'jwk' });
    jwk.kid = crypto.randomBytes(12).toString('base64url');
    jwk.use = 'sig';
    keys.push(jwk);
  }
  return { keys };
}

function loadKeys() {
  if (KEYS_FILE && fs.existsSync(KEYS_FILE)) {
    return JSON.parse(fs.readFileSync(KEYS_FILE, 'utf8'));
  }
  const jwks = generateKeys();
  if (KEYS_FILE) {
    fs.writeFileSync(KEYS_FILE, JSON.stringify(jwks, null, 2), { mode: 0o600 });
  }
  return jwks;
}

const JWKS = loadKeys();

// ---------------------------------------------------------------- test state

// Users are made up on the fly: any subject exists.
const accounts = new Map();
// Queue of logins that complete the next interactions without a form.
const nextLogins = [];
// ID token rewrites, by subject, applied once at the token endpoint.
const idTokenOverrides = new Map();
// What each interaction was asked (for tests that check the request).
const interactionLog = [];

function upsertAccount(sub, { email, name, groups } = {}) {
  const existing = accounts.get(sub) || {
    email: `${sub}@example.com`, name: sub, groups: [],
  };
  const account = {
    email: email ?? existing.email,
    name: name ?? existing.name,
    groups: groups ?? existing.groups,
  };
  accounts.set(sub, account);
  return account;
}

async function findAccount(ctx, sub) {
  const account = accounts.get(sub) || upsertAccount(sub);
  return {
    accountId: sub,
    async claims() {
      return {
        sub,
        email: account.email,
        email_verified: true,
        name: account.name,
        preferred_username: sub,
        groups: account.groups,
      };
    },
  };
}

// ---------------------------------------------------------------- pages

const esc = (value) => String(value ?? '')
  .replaceAll('&', '&amp;')
  .replaceAll('<', '&lt;')
  .replaceAll('>', '&gt;')
  .replaceAll('"', '&quot;')
  .replaceAll("'", '&#39;');

function page(title, body, { script } = {}) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${esc(title)}</title>
${script ? `<script>${script}</script>` : ''}
</head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>`;
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Provider error', `<dl id="error">${Object.entries(out)
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd class="${esc(k)}">${esc(v)}</dd>`).join('')}</dl>`);
}

async function logoutSource(ctx, form) {
  // `form` is oidc-provider's <form id="op.logoutForm"> with the xsrf input.
  ctx.body = page('Sign out of the test provider?', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes" id="logout-yes">Yes, sign me out</button>
<button type="submit" form="op.logoutForm" id="logout-no">No, stay signed in</button>`, {
    script: LOGOUT_AUTO_CONFIRM
      ? "document.addEventListener('DOMContentLoaded', function () { document.getElementById('logout-yes').click(); });"
      : undefined,
  });
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<p id="signed-out">You are signed out of the test provider.</p>');
}

function loginForm(uid, details) {
  const { params, prompt } = details;
  const requested = params.acr_values ? String(params.acr_values).split(' ').filter(Boolean) : [];
  const choices = [...ACR_VALUES, ...requested.filter((v) => !ACR_VALUES.includes(v))];
  const selected = requested[0] || ACR_VALUES[0];
  const options = choices
    .map((v) => `<option value="${esc(v)}"${v === selected ? ' selected' : ''}>${esc(v)}</option>`)
    .join('')
    + '<option value="">(no acr)</option>';
  const asked = {
    prompt: prompt.name,
    reasons: prompt.reasons,
    acr_values: params.acr_values,
    max_age: params.max_age,
    prompt_param: params.prompt,
    login_hint: params.login_hint,
    claims: params.claims,
  };
  return page('Sign in to the test provider', `
<form method="post" action="/interaction/${esc(uid)}/login" id="login-form" autocomplete="off">
  <p><label>Subject <input name="login" id="login" value="${esc(params.login_hint)}" required autofocus></label></p>
  <p><label>Achieved acr <select name="acr" id="acr">${options}</select></label></p>
  <p><label>amr (space or comma separated) <input name="amr" id="amr" value=""></label></p>
  <p><label>Email <input name="email" id="email" value=""></label></p>
  <p><label>Name <input name="name" id="name" value=""></label></p>
  <p><label>Groups (comma separated) <input name="groups" id="groups" value=""></label></p>
  <p><button type="submit" id="submit">Sign in</button>
     <a href="/interaction/${esc(uid)}/abort" id="abort">Cancel</a></p>
</form>
<pre id="request">${esc(JSON.stringify(asked, null, 2))}</pre>`);
}

// ---------------------------------------------------------------- provider

const { Check, base } = interactionPolicy;
const policy = base();
policy.get('login').checks.add(new Check(
  'acr_values_not_met',
  'requested ACR could not be obtained',
  (ctx) => {
    const { oidc } = ctx;
    if (!STEP_UP_ON_ACR_VALUES || !oidc.params.acr_values) return Check.NO_NEED_TO_PROMPT;
    if (!oidc.session.accountId) return Check.REQUEST_PROMPT;
    // Just signed in: answer with what was achieved, even if lower.
    if (oidc.result?.login) return Check.NO_NEED_TO_PROMPT;
    const wanted = String(oidc.params.acr_values).split(' ');
    return wanted.includes(oidc.acr) ? Check.NO_NEED_TO_PROMPT : Check.REQUEST_PROMPT;
  },
  ({ oidc }) => ({ acr_values: oidc.params.acr_values, session_acr: oidc.acr }),
));

// Consent is granted automatically: every request tops up the grant with the
// scopes and claims it asks for, so the consent prompt never shows.
async function loadExistingGrant(ctx) {
  const { Grant } = ctx.oidc.provider;
  const accountId = ctx.oidc.session.accountId;
  const clientId = ctx.oidc.client.clientId;
  const grantId = ctx.oidc.result?.consent?.grantId
    || ctx.oidc.session.grantIdFor(clientId);
  let grant = grantId ? await Grant.find(grantId) : undefined;
  if (!grant || grant.accountId !== accountId || grant.clientId !== clientId) {
    grant = new Grant({ accountId, clientId });
  }
  const scopes = [...ctx.oidc.requestParamOIDCScopes];
  if (scopes.length) grant.addOIDCScope(scopes.join(' '));
  const claims = [...ctx.oidc.requestParamClaims];
  if (claims.length) grant.addOIDCClaims(claims);
  await grant.save();
  return grant;
}

const clients = [{
  client_id: CLIENT_ID,
  client_secret: CLIENT_SECRET,
  redirect_uris: REDIRECT_URIS,
  post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: TOKEN_ENDPOINT_AUTH_METHOD,
  id_token_signed_response_alg: ID_TOKEN_ALG,
}, ...EXTRA_CLIENTS];

const provider = new Provider(ISSUER, {
  clients,
  jwks: JWKS,
  findAccount,
  loadExistingGrant,
  acrValues: ACR_VALUES,
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  claims: {
    // acr, amr and auth_time go into every ID token (as most providers do);
    // oidc-provider alone would add them only when asked for.
    openid: ['sub', 'acr', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'groups'],
    groups: ['groups'],
    acr: null,
    amr: null,
    auth_time: null,
    sid: null,
    iss: null,
  },
  // Scope claims (email, name, groups) go into the ID token too, not only
  // to the userinfo endpoint.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  cookies: {
    keys: COOKIE_KEYS,
    // Plain http on 127.0.0.1: no `secure`, SameSite lax.
    long: { httpOnly: true, sameSite: 'lax' },
    short: { httpOnly: true, sameSite: 'lax' },
  },
  interactions: {
    policy,
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  features: {
    devInteractions: { enabled: false },
    claimsParameter: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    userinfo: { enabled: true },
    rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
  },
  ttl: {
    IdToken: ID_TOKEN_TTL,
  },
  renderError,
});

provider.on('server_error', (ctx, err) => {
  console.error('server_error', err);
});

// ---------------------------------------------------------------- ID token rewrites

function b64json(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function signJws(header, payload) {
  const jwk = JWKS.keys.find((k) => k.kid === header.kid);
  if (!jwk) throw new Error(`no key ${header.kid}`);
  const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  const m = /^(RS|PS|ES)(256|384|512)$/.exec(header.alg);
  if (!m) throw new Error(`cannot re-sign ${header.alg}`);
  const hash = `sha${m[2]}`;
  let opts = key;
  if (m[1] === 'PS') {
    opts = { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: Number(m[2]) / 8 };
  } else if (m[1] === 'ES') {
    opts = { key, dsaEncoding: 'ieee-p1363' };
  }
  const sig = crypto.sign(hash, Buffer.from(input), opts).toString('base64url');
  return `${input}.${sig}`;
}

provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route !== 'token' || !ctx.body || typeof ctx.body.id_token !== 'string') return;
  const [h, p] = ctx.body.id_token.split('.');
  const header = b64json(h);
  const payload = b64json(p);
  const override = idTokenOverrides.get(payload.sub);
  if (!override) return;
  idTokenOverrides.delete(payload.sub);
  if (typeof override.raw === 'string') {
    // The test's own token (e.g. alg "none"), served as is.
    ctx.body = { ...ctx.body, id_token: override.raw };
    return;
  }
  for (const claim of override.omit || []) delete payload[claim];
  Object.assign(payload, override.set || {});
  ctx.body = { ...ctx.body, id_token: signJws(header, payload) };
});

// ---------------------------------------------------------------- interactions

const UNMET = 'unmet_authentication_requirements';

function essentialAcrUnmet(params, acr) {
  if (!params.claims) return false;
  let claims;
  try {
    claims = JSON.parse(params.claims);
  } catch {
    return false;
  }
  const req = claims?.id_token?.acr;
  if (!req?.essential) return false;
  if (Array.isArray(req.values)) return !req.values.includes(acr);
  if (typeof req.value === 'string') return req.value !== acr;
  return false;
}

function splitList(value) {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) return value.map(String);
  const parts = String(value).split(/[\s,]+/).filter(Boolean);
  return parts;
}

function defaultAcr(params) {
  const requested = params.acr_values ? String(params.acr_values).split(' ').filter(Boolean) : [];
  return requested[0] || ACR_VALUES[0];
}

// Turns a login choice (form or test control) into an interaction result.
function loginResult(details, choice) {
  const { params } = details;
  const sub = choice.sub || params.login_hint;
  if (!sub) {
    return { error: 'access_denied', error_description: 'test provider: no subject given' };
  }
  if (choice.error) {
    return { error: String(choice.error), error_description: choice.error_description || 'test provider: error chosen by the test' };
  }
  upsertAccount(String(sub), {
    email: choice.email || undefined,
    name: choice.name || undefined,
    groups: choice.groups,
  });
  // `acr` absent: the first requested value (else the lowest configured);
  // `acr` null or "": no acr at all.
  let acr = 'acr' in choice ? choice.acr : defaultAcr(params);
  if (acr === '' || acr === null) acr = undefined;
  if (essentialAcrUnmet(params, acr)) {
    return { error: UNMET, error_description: 'requested ACR could not be obtained' };
  }
  const amr = splitList(choice.amr);
  const login = { accountId: String(sub), remember: choice.remember !== false };
  if (acr !== undefined) login.acr = String(acr);
  if (amr?.length) login.amr = amr;
  const now = Math.floor(Date.now() / 1000);
  if (Number.isInteger(choice.auth_time)) {
    login.ts = choice.auth_time;
  } else if (Number.isInteger(choice.auth_time_offset)) {
    login.ts = now + choice.auth_time_offset;
  }
  if (choice.id_token_omit || choice.id_token_set || typeof choice.id_token_raw === 'string') {
    idTokenOverrides.set(String(sub), {
      omit: splitList(choice.id_token_omit) || [],
      set: choice.id_token_set || {},
      raw: choice.id_token_raw,
    });
  } else {
    idTokenOverrides.delete(String(sub));
  }
  return { login };
}

async function grantConsent(details) {
  const { prompt: { details: missing }, params, session } = details;
  let grant;
  if (details.grantId) grant = await provider.Grant.find(details.grantId);
  if (!grant) grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scope] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scope.join(' '));
    }
  }
  const grantId = await grant.save();
  return details.grantId ? {} : { grantId };
}

// ---------------------------------------------------------------- HTTP

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(Object.assign(new Error('body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  const buf = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  res.writeHead(status, {
    'content-type': typeof body === 'string' ? type : 'application/json',
    'content-length': buf.length,
    'cache-control': 'no-store',
  });
  res.end(buf);
}

async function handleInteraction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    if (err instanceof errors.SessionNotFound) {
      send(res, 400, page('Provider error', `<p id="error">${esc(err.message)}: ${esc(err.error_description)}</p>`));
      return;
    }
    throw err;
  }
  if (details.uid !== uid) {
    send(res, 400, page('Provider error', '<p id="error">interaction mismatch</p>'));
    return;
  }
  const { prompt, params } = details;

  if (action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (prompt.name === 'consent') {
    const consent = await grantConsent(details);
    await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
    return;
  }
  if (prompt.name !== 'login') {
    send(res, 400, page('Provider error', `<p id="error">unknown prompt ${esc(prompt.name)}</p>`));
    return;
  }

  if (action === 'login') {
    if (req.method !== 'POST') {
      send(res, 405, 'POST only', 'text/plain');
      return;
    }
    const form = new URLSearchParams(await readBody(req));
    const choice = {
      sub: (form.get('login') || '').trim(),
      acr: form.get('acr') ?? undefined,
      amr: form.get('amr') || undefined,
      email: form.get('email') || undefined,
      name: form.get('name') || undefined,
      groups: form.get('groups') ? splitList(form.get('groups')) : undefined,
    };
    if (choice.acr === undefined) delete choice.acr;
    await provider.interactionFinished(req, res, loginResult(details, choice), {
      mergeWithLastSubmission: false,
    });
    return;
  }

  // GET /interaction/:uid
  interactionLog.push({
    uid, at: Math.floor(Date.now() / 1000), prompt, params, auto: nextLogins.length > 0,
  });
  if (details.lastSubmission?.login && prompt.reasons.some((r) => r.startsWith('essential_acr'))) {
    await provider.interactionFinished(req, res, {
      error: UNMET, error_description: 'requested ACR could not be obtained',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (nextLogins.length) {
    const choice = nextLogins.shift();
    await provider.interactionFinished(req, res, loginResult(details, choice), {
      mergeWithLastSubmission: false,
    });
    return;
  }
  send(res, 200, loginForm(uid, details));
}

async function handleTestControl(req, res, path) {
  if (path === '/__test__/next-login') {
    if (req.method === 'POST') {
      const body = JSON.parse((await readBody(req)) || '{}');
      const entries = Array.isArray(body) ? body : [body];
      for (const e of entries) {
        if (typeof e !== 'object' || e === null || Array.isArray(e)) {
          send(res, 400, { error: 'each entry must be a JSON object' });
          return;
        }
      }
      nextLogins.push(...entries);
      send(res, 200, { queued: nextLogins.length });
      return;
    }
    if (req.method === 'DELETE') {
      nextLogins.length = 0;
      idTokenOverrides.clear();
      send(res, 200, { queued: 0 });
      return;
    }
    if (req.method === 'GET') {
      send(res, 200, { queued: nextLogins.length, entries: nextLogins });
      return;
    }
  }
  if (path === '/__test__/interactions' && req.method === 'GET') {
    send(res, 200, interactionLog);
    return;
  }
  if (path === '/__test__/interactions' && req.method === 'DELETE') {
    interactionLog.length = 0;
    send(res, 200, []);
    return;
  }
  send(res, 404, { error: 'not found' });
}

const providerCallback = provider.callback();

const server = http.createServer(async (req, res) => {
  try {
    const { pathname } = new URL(req.url, ISSUER);
    if (pathname.startsWith('/__test__/')) {
      await handleTestControl(req, res, pathname);
      return;
    }
    const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|abort))?$/.exec(pathname);
    if (m) {
      res.setHeader('cache-control', 'no-store');
      await handleInteraction(req, res, m[1], m[2]);
      return;
    }
    providerCallback(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) {
      send(res, err.status || 500, page('Provider error', `<p id="error">${esc(err.message)}</p>`));
    } else {
      res.destroy();
    }
  }
});

server.listen(PORT, HOST, () => {
  console.log(`oidc test provider listening on http://${HOST}:${PORT} issuer=${ISSUER}`);
});

if (flag(settings.EXIT_ON_STDIN_CLOSE, false)) {
  // The test harness holds our stdin: when it dies, we go too.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
