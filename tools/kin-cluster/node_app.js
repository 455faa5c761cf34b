// An ordinary Node.js cluster app, written as for Node's own primary: the primary forks two
// workers, and each worker answers every request with "node PID\n" on 127.0.0.1:$PORT. A
// request for /leave is answered, then the worker leaves with cluster.worker.disconnect(). With
// UDP_PORT set, each worker also binds a UDP socket there (shared through the primary, as
// Node shares datagram sockets in every mode) and answers each datagram with "udp PID".
// Run by kin-cluster --node, every process is a worker and kin-cluster is the primary.
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

if (cluster.isPrimary) {
  for (let i = 0; i < 2; i++) cluster.fork();
} else {
  const port = Number(process.env.PORT || 8000);
  http.createServer((req, res) => {
    const body = `node ${process.pid}\n`;
    res.writeHead(200, {
      'Content-Type': 'text/plain',
      'Content-Length': Buffer.byteLength(body),
      'Connection': 'close',
    });
    res.end(body);
    if (req.url === '/leave') cluster.worker.disconnect();
  }).listen(port, '127.0.0.1');
  if (process.env.UDP_PORT) {
    const dgram = require('node:dgram');
    const udp = dgram.createSocket('udp4');
    udp.on('message', (msg, from) => udp.send(`udp ${process.pid}`, from.port, from.address));
    udp.bind(Number(process.env.UDP_PORT), '127.0.0.1');
  }
}
