// The Node peer of the channel benchmarks (channel_pingpong.cpp, channel_oneway.cpp and
// channel_handles.cpp), which run it from the source directory as
//   node channel_node.js pingpong <round trips> <warm-up round trips>
//   node channel_node.js oneway <small|64k> <messages> <warm-up messages>
//   node channel_node.js handles <handles> <warm-up handles>
// It forks itself (child_process.fork, serialization 'json', the default) and the two talk with
// child.send / process.send and 'message' events, as perf-ipc's Node anchors did:
// - pingpong: {i} goes to the child, which sends the object it got back; the next {i} leaves
//   when the previous one is back;
// - oneway: {i} (small) or {i, s: 64 KiB string} (64k) one way; the parent sends while send()
//   returns true and resumes from the callback of the send that returned false;
// - handles: accepted 127.0.0.1 TCP connections (net.Socket), one per child.send({i, p}, socket),
//   the next sent from the previous one's callback (perf-ipc's "paced", Node's faster mode);
//   the child checks each handle and destroys it. The clients are reset at the end.
// The child checks every message's sequence number (and for a sample the content: the 64 KiB
// string, the handle's peer port), acks the warm-up phase, then the last message with the CPU
// time it spent since that ack. The parent prints one line:
//   RESULT wall_ns=<timed phase> parent_cpu_ns=<> child_cpu_ns=<> ops=<> ops_total=<>
'use strict';
const { fork } = require('child_process');
const net = require('net');

const now = () => process.hrtime.bigint();
const cpuNs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) * 1000;
};
const BIG = 'x'.repeat(65536);
const fail = (what) => {
  process.stderr.write(`channel_node.js: ${what}\n`);
  process.exit(1);
};

function child(mode, args) {
  const warm = Number(args[mode === 'oneway' ? 2 : 1]);
  const total = warm + Number(args[mode === 'oneway' ? 1 : 0]);
  const big = mode === 'oneway' && args[0] === '64k';
  let got = 0;
  let cpu0 = 0;
  const ack = () => {
    if (got === warm) {
      cpu0 = cpuNs();
      process.send({ ack: 0 });
    } else if (got === total) {
      process.send({ ack: 1, cpu: cpuNs() - cpu0 }, () => process.disconnect());
    }
  };
  if (mode === 'pingpong') {
    process.on('message', (m) => {
      if (m.done === 1) {
        process.send({ cpu: cpuNs() - cpu0 }, () => process.disconnect());
        return;
      }
      if (m.i !== got) fail(`ping ${m.i}, expected ${got}`);
      if (got++ === warm) cpu0 = cpuNs();
      process.send(m);
    });
  } else if (mode === 'oneway') {
    process.on('message', (m) => {
      if (m.i !== got) fail(`message ${m.i}, expected ${got}`);
      if (big && (m.s.length !== 65536 || (got % 64 === 0 && m.s !== BIG))) fail('bad 64 KiB string');
      got++;
      ack();
    });
  } else if (mode === 'handles') {
    process.on('message', (m, handle) => {
      if (!handle) fail('a message without its handle');
      if (m.i !== got) fail(`handle message ${m.i}, expected ${got}`);
      if (got % 256 === 0 && handle.remotePort !== m.p) fail('a handle with the wrong peer');
      handle.destroy();
      got++;
      ack();
    });
  } else {
    fail(`unknown child mode ${mode}`);
  }
}

function report(t0, c0, ops, opsTotal, childCpu) {
  const wall = now() - t0;
  const cpu = cpuNs() - c0;
  process.stdout.write(
    `RESULT wall_ns=${wall} parent_cpu_ns=${cpu} child_cpu_ns=${childCpu} ops=${ops} ` +
      `ops_total=${opsTotal}\n`,
  );
}

function start(args) {
  const c = fork(__filename, ['child', ...args]);
  c.on('exit', (code, signal) => {
    if (code !== 0) fail(`the child ended with ${code} ${signal}`);
  });
  return c;
}

function pingpong(n, warm) {
  const c = start(['pingpong', String(n), String(warm)]);
  let seq = 0;
  let t0 = 0n;
  let c0 = 0;
  let tEnd = 0n;
  let cEnd = 0;
  c.on('message', (m) => {
    if (m.cpu !== undefined) {
      // The clocks stopped at the last pong; report() reads them as they were.
      process.stdout.write(
        `RESULT wall_ns=${tEnd - t0} parent_cpu_ns=${cEnd - c0} child_cpu_ns=${m.cpu} ` +
          `ops=${n} ops_total=${n + warm}\n`,
      );
      return;
    }
    if (m.i !== seq) fail(`pong ${m.i}, expected ${seq}`);
    seq++;
    if (seq === warm + n) {
      tEnd = now();
      cEnd = cpuNs();
      c.send({ done: 1 });
      return;
    }
    if (seq === warm) {
      t0 = now();
      c0 = cpuNs();
    }
    c.send({ i: seq });
  });
  c.send({ i: seq });
}

function oneway(kind, n, warm) {
  const c = start(['oneway', kind, String(n), String(warm)]);
  const big = kind === '64k';
  let seq = 0;
  let target = warm;
  let pumping = false;
  let t0 = 0n;
  let c0 = 0;
  const pump = () => {
    pumping = true;
    while (seq < target) {
      let stalled = false;
      const ok = c.send(big ? { i: seq++, s: BIG } : { i: seq++ }, (err) => {
        if (err) fail(`send: ${err}`);
        if (stalled && !pumping) pump();
      });
      if (!ok) {
        stalled = true;
        break;
      }
    }
    pumping = false;
  };
  c.on('message', (m) => {
    if (m.ack === 0) {
      t0 = now();
      c0 = cpuNs();
      target = warm + n;
      pump();
    } else if (m.ack === 1) {
      if (seq !== warm + n) fail('the last ack came early');
      report(t0, c0, n, warm + n, m.cpu);
    }
  });
  pump();
}

function handles(n, warm) {
  const total = warm + n;
  const server = net.createServer();
  const accepted = [];
  const clients = [];
  server.on('connection', (s) => {
    s.on('error', () => {});
    accepted.push(s);
    if (accepted.length === clients.length) more();
  });
  // Connections in waves of 256, each wave once the previous one was accepted (the listen
  // backlog is Node's default, 511). The clients allow half-open connections, so they do not
  // answer the child's close with a close of their own; they are reset at the end, which
  // leaves no TIME_WAIT socket behind (as the C++ peers' clients).
  const more = () => {
    if (clients.length === total) {
      server.close();
      run();
      return;
    }
    const { port } = server.address();
    const wave = Math.min(256, total - clients.length);
    for (let k = 0; k < wave; k++) {
      const cl = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
      cl.on('error', () => {});
      clients.push(cl);
    }
  };
  server.listen(0, '127.0.0.1', more);

  const run = () => {
    const c = start(['handles', String(n), String(warm)]);
    let seq = 0;
    let t0 = 0n;
    let c0 = 0;
    const send = (end) => {
      if (seq === end) return;
      const s = accepted[seq];
      c.send({ i: seq, p: s.remotePort }, s, (err) => {
        if (err) fail(`send: ${err}`);
        send(end);
      });
      seq++;
    };
    c.on('message', (m) => {
      if (m.ack === 0) {
        t0 = now();
        c0 = cpuNs();
        send(total);
      } else if (m.ack === 1) {
        if (seq !== total) fail('the last ack came early');
        report(t0, c0, n, total, m.cpu);
        for (const cl of clients) cl.resetAndDestroy();
      }
    });
    send(warm);
  };
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'child') {
  child(args[0], args.slice(1));
} else if (mode === 'pingpong') {
  pingpong(Number(args[0]), Number(args[1]));
} else if (mode === 'oneway') {
  oneway(args[0], Number(args[1]), Number(args[2]));
} else if (mode === 'handles') {
  handles(Number(args[0]), Number(args[1]));
} else {
  fail('usage: channel_node.js pingpong|oneway|handles ...');
}
