// A Node parent and a kin child (kin-echo) on Node's own IPC channel: every message comes back
// exactly, and sockets and servers sent with process.send's handle argument are used by the
// child. Usage: node parent.js /path/to/kin-echo. Exits 0 when everything matched, 1 otherwise.
'use strict';
const { spawn } = require('child_process');
const assert = require('assert');
const net = require('net');

const kinEcho = process.argv[2];
const warnings = [];
process.on('warning', (w) => warnings.push(String(w)));
const deadline = setTimeout(() => fail('timed out'), 60000);

function fail(why) {
  console.error(`node-parent: FAIL: ${why}`);
  process.exit(1);
}

const child = spawn(kinEcho, [], { stdio: ['inherit', 'inherit', 'inherit', 'ipc'] });
child.on('error', (e) => fail(`spawn: ${e.message}`));
let exited = null;
child.on('exit', (code, signal) => { exited = { code, signal }; });

// The next message from the child, in order.
const inbox = [];
const waiting = [];
child.on('message', (m, handle) => {
  if (handle !== undefined) fail('the echo came with a handle');
  if (waiting.length) waiting.shift()(m); else inbox.push(m);
});
function nextMessage() {
  return inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => waiting.push(r));
}

function send(message, handle) {
  return new Promise((resolve, reject) => {
    const cb = (err) => (err ? reject(err) : resolve());
    if (handle === undefined) child.send(message, cb); else child.send(message, handle, cb);
  });
}

// Connects to 127.0.0.1:port and resolves with everything read until the end.
function readAll(port) {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1');
    let data = '';
    c.setEncoding('utf8');
    c.on('data', (d) => { data += d; });
    c.on('end', () => resolve(data));
    c.on('error', reject);
  });
}

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

async function main() {
  const expectedLine = `echo ${child.pid}\n`;
  const values = [
    { hello: 'world', n: 1, arr: [1, 2, 3], nested: { a: null, b: [true, false] } },
    'a string', '', 42, -0.5, 1e21, 123456789012345680000, 5e-324, true, false, null, [],
    {}, [[[[[[]]]]]],
    'é€😀 \u2028 \u2029 \u0000 \u001f "quotes" \\back\\ \n\r\t',
    '\ud800 lone surrogate',
    { 'key with "quotes"': 'v', 'ünï': 'çødé' },
    { cmd: 'NODE_' }, { cmd: 'node_foo' }, { cmd: 42 },
  ];
  for (const v of values) {
    await send(v);
    assert.deepStrictEqual(await nextMessage(), v);
  }
  console.log(`node-parent: ${values.length} values echoed exactly`);

  const big = 'x'.repeat(1 << 20) + 'é';
  await send({ big });
  assert.deepStrictEqual(await nextMessage(), { big });
  console.log('node-parent: a 1 MB string echoed exactly');

  const burst = 1000;
  const sends = [];
  for (let i = 0; i < burst; i++) sends.push(send({ i, pad: 'p'.repeat(i % 97) }));
  for (let i = 0; i < burst; i++) {
    assert.deepStrictEqual(await nextMessage(), { i, pad: 'p'.repeat(i % 97) });
  }
  await Promise.all(sends);
  console.log(`node-parent: a burst of ${burst} messages echoed in order`);

  // A socket the server accepted (it carries Node's socket-list key), then a client socket.
  {
    const server = net.createServer();
    const accepted = new Promise((r) => server.once('connection', r));
    const port = await listen(server);
    const reading = readAll(port);
    const socket = await accepted;
    await send({ with: 'accepted socket' }, socket);
    assert.strictEqual(await reading, expectedLine);
    assert.deepStrictEqual(await nextMessage(), { with: 'accepted socket' });
    // The key makes server.close() ask the child whether its copies are closed.
    await new Promise((resolve, reject) => server.close((e) => (e ? reject(e) : resolve())));
    console.log('node-parent: an accepted net.Socket was used by kin');
  }
  {
    const server = net.createServer((s) => {
      let data = '';
      s.setEncoding('utf8');
      s.on('data', (d) => { data += d; });
      s.on('end', () => { s.end(); server.emit('got', data); });
    });
    const port = await listen(server);
    const socket = net.connect(port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    const got = new Promise((r) => server.once('got', r));
    await send('client socket', socket);
    assert.strictEqual(await got, expectedLine);
    assert.strictEqual(await nextMessage(), 'client socket');
    server.close();
    console.log('node-parent: a connected client net.Socket was used by kin');
  }
  // A listening server: the child accepts one connection on it.
  {
    const server = net.createServer(() => fail('the parent accepted a connection meant for the child'));
    const port = await listen(server);
    await send({ with: 'server' }, server);
    assert.strictEqual(await readAll(port), expectedLine);
    assert.deepStrictEqual(await nextMessage(), { with: 'server' });
    server.close();
    console.log('node-parent: a net.Server was used by kin');
  }

  // Disconnect: kin-echo exits 0.
  const gone = new Promise((r) => (exited ? r() : child.once('exit', r)));
  child.disconnect();
  await gone;
  assert.deepStrictEqual(exited, { code: 0, signal: null });
  if (warnings.length) fail(`warnings: ${warnings.join('; ')}`);
  clearTimeout(deadline);
  console.log('node-parent: kin-echo exited 0 after the disconnect; no warning');
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
