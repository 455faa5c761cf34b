// The Node peer of kin-bench-spawn (tools/bench/spawn.cpp), which starts it as
//   node spawn_node.js <rss_mib>
// It first grows its own resident set to rss_mib MiB (Buffers, every byte written: the Node
// process is the parent of the children, so its size is the one fork copies), prints
// `ready <VmRSS MiB>`, then runs one command per line on stdin:
//   run <n> <inflight> <cap_ms> <target>
// child_process.spawn(target, [], {stdio: 'ignore'}) n times, `inflight` at a time, the next
// spawn started from the 'exit' event; no spawn is started once cap_ms have passed since the
// first. It answers
//   done <n done> <elapsed ns> <user us> <system us> <children with a non-zero status>
// where elapsed runs from the first spawn to the last 'exit', and user/system are this
// process's CPU time over the same span. It exits when stdin closes.
'use strict';
const cp = require('child_process');
const readline = require('readline');

const rssMiB = Number(process.argv[2] || 0);
// Kept reachable from the global object, so that no garbage collection frees it.
const ballast = (globalThis.kinBenchBallast = []);
for (let left = rssMiB; left > 0;) {
  const mib = Math.min(left, 256);
  const b = Buffer.allocUnsafeSlow(mib * 1024 * 1024);
  b.fill(1);
  ballast.push(b);
  left -= mib;
}

function run(n, inflight, capMs, target) {
  return new Promise((resolve) => {
    let started = 0;
    let done = 0;
    let bad = 0;
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    const deadline = t0 + BigInt(capMs) * 1000000n;
    const finish = () => {
      const elapsed = process.hrtime.bigint() - t0;
      const cpu = process.cpuUsage(cpu0);
      resolve(`done ${done} ${elapsed} ${cpu.user} ${cpu.system} ${bad}`);
    };
    const mayStart = () => started < n && process.hrtime.bigint() < deadline;
    const one = () => {
      started++;
      const c = cp.spawn(target, [], { stdio: 'ignore' });
      c.on('error', (e) => {
        process.stderr.write(`spawn_node.js: spawn ${target}: ${e}\n`);
        process.exit(1);
      });
      c.on('exit', (code, signal) => {
        if (code !== 0 || signal !== null) bad++;
        done++;
        if (mayStart()) one();
        else if (done === started) finish();
      });
    };
    for (let i = 0; i < inflight && (i === 0 || mayStart()); i++) one();
  });
}

function vmRssMiB() {
  const m = /VmRSS:\s+(\d+)/.exec(require('fs').readFileSync('/proc/self/status', 'utf8'));
  return m ? Math.floor(Number(m[1]) / 1024) : -1;
}

process.stdout.write(`ready ${vmRssMiB()}\n`);

// One command at a time: the benchmark waits for each answer before sending the next.
let queue = Promise.resolve();
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  queue = queue.then(async () => {
    const w = line.trim().split(/\s+/);
    if (w[0] !== 'run' || w.length !== 5) {
      process.stderr.write(`spawn_node.js: bad command '${line}'\n`);
      process.exit(2);
    }
    const answer = await run(Number(w[1]), Number(w[2]), Number(w[3]), w[4]);
    process.stdout.write(answer + '\n');
  });
});
rl.on('close', () => {
  queue.then(() => process.exit(0));
});
