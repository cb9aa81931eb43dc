// Segment's own Node server SDK (@segment/analytics-node) sending to weft.
//
// The client is set up the way a site owner would switch an existing
// integration to weft: a write key and weft's host, nothing else. It sends
// one message of each Segment type, then closeAndFlush().
//
//   node segment-client.mjs <package dir> <host> <write key>
//
// <package dir> is the installed node_modules/@segment/analytics-node (ESM
// ignores NODE_PATH, so it is loaded by path). Every HTTP answer the client
// gets is printed as one line `response <status> <body>`: fetch is observed,
// not changed, so what the SDK sends and sees is its own. Exits 1 on an
// `error` event from the client, an answer that is not 2xx, no request at
// all, or after 20 s.

import { createRequire } from 'node:module';

const [packageDir, host, writeKey] = process.argv.slice(2);
if (!packageDir || !host || !writeKey) {
  console.error('usage: node segment-client.mjs <package dir> <host> <write key>');
  process.exit(2);
}

const problems = [];
let requests = 0;

const deadline = setTimeout(() => {
  for (const p of new Set(problems)) console.error(`segment-client: ${p}`);
  console.error('segment-client: gave up after 20 s (closeAndFlush never finished)');
  process.exit(1);
}, 20_000);

const realFetch = globalThis.fetch;
globalThis.fetch = async (url, init) => {
  requests += 1;
  let response;
  try {
    response = await realFetch(url, init);
  } catch (err) {
    problems.push(`${init?.method ?? 'GET'} ${url} failed: ${err?.cause?.message ?? err?.message ?? err}`);
    throw err;
  }
  const body = await response.clone().text();
  console.log(`response ${response.status} ${body}`);
  if (response.status < 200 || response.status > 299) {
    problems.push(`${init?.method ?? 'GET'} ${url} answered ${response.status}: ${body}`);
  }
  return response;
};

const { Analytics } = createRequire(import.meta.url)(packageDir);

const analytics = new Analytics({ writeKey, host });
analytics.on('error', (err) => {
  const reason = err?.reason instanceof Error ? err.reason.message : String(err?.reason ?? err);
  problems.push(`client error ${err?.code ?? '?'}: ${reason}`);
});

const userId = 'segment-user-1';
const anonymousId = 'segment-anon-1';

analytics.identify({
  userId,
  anonymousId,
  traits: { email: 'ada@example.com', plan: 'pro', logins: 3 },
});
analytics.track({
  userId,
  event: 'Order Completed',
  properties: { orderId: 'o-1001', revenue: 42.5, currency: 'EUR', products: [{ sku: 'sku-7' }] },
});
analytics.page({
  anonymousId,
  category: 'Docs',
  name: 'Pricing',
  properties: { path: '/pricing', url: 'https://shop.example/pricing' },
});
analytics.screen({ userId, name: 'Home', properties: { variant: 'dark' } });
analytics.group({ userId, groupId: 'segment-org-1', traits: { name: 'Acme', employees: 12 } });
analytics.alias({ userId, previousId: anonymousId });

try {
  await analytics.closeAndFlush();
} catch (err) {
  problems.push(`closeAndFlush failed: ${err?.message ?? err}`);
}
clearTimeout(deadline);

if (requests === 0) {
  problems.push('the client made no HTTP request');
}
if (problems.length > 0) {
  for (const p of new Set(problems)) console.error(`segment-client: ${p}`);
  process.exit(1);
}
console.log(`segment-client: ${requests} request(s), all answered 2xx`);
