// The Node peer of kin-bench-spawn-sync (tools/bench/spawn_sync.cpp): child_process.spawnSync
// with its default stdio ('pipe' for 0, 1 and 2: an empty stdin, stdout and stderr captured),
// one child after another.
//
// Started by the benchmark as `node spawn_sync_node.js --serve`: prints `ready`, then runs one
// command per line on stdin,
//   run <n> <stdout bytes expected> <program> [args...]
// (blank-separated, so no word may contain a blank) and answers
//   done <n done> <elapsed ns> <user us> <system us> <bad children>
// where a bad child exited other than with status 0, wrote to stderr, or wrote other than the
// expected number of bytes to stdout; elapsed runs from the first spawnSync to the return of the
// last, and user/system are this process's CPU time over the same span. Exits when stdin closes.
//
// By hand: `node spawn_sync_node.js <n> <runs> <program> [args...]` prints one `#` line per run
// (after one unreported warm-up of n/10) and the median, as kin-bench-spawn-sync's `#` lines do.
'use strict';
const cp = require('child_process');
const readline = require('readline');

function run(n, expectOut, argv) {
  const [file, ...args] = argv;
  let bad = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const r = cp.spawnSync(file, args, { stdio: 'pipe' });
    if (r.error) {
      process.stderr.write(`spawn_sync_node.js: spawnSync ${file}: ${r.error}\n`);
      process.exit(1);
    }
    if (r.status !== 0 || r.stdout.length !== expectOut || r.stderr.length !== 0) bad++;
  }
  const elapsed = process.hrtime.bigint() - t0;
  const cpu = process.cpuUsage(cpu0);
  return { n, elapsed, user: cpu.user, system: cpu.system, bad };
}

if (process.argv[2] === '--serve') {
  process.stdout.write('ready\n');
  // One command at a time: the benchmark waits for each answer before sending the next, and
  // spawnSync blocks this process while it runs.
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const w = line.trim().split(/\s+/);
    if (w[0] !== 'run' || w.length < 4) {
      process.stderr.write(`spawn_sync_node.js: bad command '${line}'\n`);
      process.exit(2);
    }
    const r = run(Number(w[1]), Number(w[2]), w.slice(3));
    process.stdout.write(`done ${r.n} ${r.elapsed} ${r.user} ${r.system} ${r.bad}\n`);
  });
  rl.on('close', () => process.exit(0));
} else {
  const n = Number(process.argv[2]);
  const runs = Number(process.argv[3]);
  const argv = process.argv.slice(4);
  if (!(n > 0) || !(runs > 0) || argv.length === 0) {
    process.stderr.write('usage: node spawn_sync_node.js <n> <runs> <program> [args...]\n');
    process.exit(2);
  }
  // The stdout bytes expected: what one spawnSync gives, checked by every later one.
  const expectOut = cp.spawnSync(argv[0], argv.slice(1)).stdout.length;
  run(Math.max(1, Math.floor(n / 10)), expectOut, argv);
  const rates = [];
  for (let i = 1; i <= runs; i++) {
    const r = run(n, expectOut, argv);
    if (r.bad !== 0) {
      process.stderr.write(`spawn_sync_node.js: ${r.bad} children went wrong\n`);
      process.exit(1);
    }
    const ns = Number(r.elapsed);
    rates.push((n * 1e9) / ns);
    process.stdout.write(
      `# spawn_sync node run ${i}: n=${n} wall_ms=${(ns / 1e6).toFixed(1)} ` +
        `spawns/s=${((n * 1e9) / ns).toFixed(1)} us/spawn=${(ns / 1e3 / n).toFixed(1)} ` +
        `parent_cpu_us/spawn=${((r.user + r.system) / n).toFixed(1)}\n`,
    );
  }
  rates.sort((a, b) => a - b);
  const m = rates.length;
  const med = m % 2 ? rates[(m - 1) / 2] : (rates[m / 2 - 1] + rates[m / 2]) / 2;
  process.stdout.write(`# spawn_sync node median: spawns/s=${med.toFixed(1)}\n`);
}
