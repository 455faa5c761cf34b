// The hello-world Node.js cluster app of the cluster benchmark (cluster_bench.py), run unmodified
// both under Node's own primary and under `kin-cluster --node`:
//   PORT=8000 NODE_CLUSTER_SCHED_POLICY=rr node cluster_app.js [WORKERS]
//   PORT=8000 kin-cluster --node --workers 2 --mode round-robin -- node cluster_app.js
// As a primary it forks WORKERS workers (argv[2], else $WORKERS, else 2); Node itself reads
// NODE_CLUSTER_SCHED_POLICY ('rr': the primary accepts and hands each connection to a worker in
// turn; 'none': the workers share the listening socket and accept themselves). Each worker
// answers every request on 127.0.0.1:$PORT with "hello\n". Under kin-cluster the file is only
// ever a worker: kin-cluster sets NODE_UNIQUE_ID, so cluster.isPrimary is false.
// SIGTERM or SIGINT to the primary disconnects the workers (which then exit) and exits 0; a
// worker that dies unasked makes the primary stop the others and exit 1, so a broken run shows.
'use strict';
const cluster = require('cluster');
const http = require('http');

const port = Number(process.env.PORT || 8000);

if (cluster.isPrimary) {
  const workers = Number(process.argv[2] || process.env.WORKERS || 2);
  if (!Number.isInteger(workers) || workers < 1) {
    process.stderr.write(`cluster_app.js: bad worker count '${process.argv[2]}'\n`);
    process.exit(2);
  }
  let stopping = false;
  const stop = (code) => {
    if (stopping) return;
    stopping = true;
    // Bounded: a worker that does not leave within 5 s is killed with the primary's exit.
    setTimeout(() => {
      for (const w of Object.values(cluster.workers)) w.process.kill('SIGKILL');
      process.exit(code);
    }, 5000).unref();
    cluster.disconnect(() => process.exit(code));
  };
  cluster.on('exit', (worker, status, signal) => {
    if (stopping) return;
    process.stderr.write(
      `cluster_app.js: worker ${worker.process.pid} died (${signal || status})\n`);
    stop(1);
  });
  process.on('SIGTERM', () => stop(0));
  process.on('SIGINT', () => stop(0));
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  http.createServer((req, res) => res.end('hello\n')).listen(port, '127.0.0.1');
}
