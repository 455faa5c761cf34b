// A Node child for a kin parent (kin::fork with the node codec): echoes every message, and for
// a handle that comes with one, uses it first — a net.Socket gets "echo <pid>\n" and is ended;
// a net.Server accepts one connection, which gets the same, then closes — and echoes the
// message after. Warnings are reported to the parent as {"warning": ...}. It exits when the
// parent disconnects.
'use strict';

const line = `echo ${process.pid}\n`;
process.on('warning', (w) => process.send({ warning: String(w) }));

// Echoes go out in the order the messages came, each once its handle was used.
const queue = [];
function flush() {
  while (queue.length && queue[0].ready) process.send(queue.shift().message);
}

process.on('message', (message, handle) => {
  const entry = { message, ready: handle === undefined };
  queue.push(entry);
  if (handle === undefined) return flush();
  if (typeof handle.listen === 'function' && typeof handle.address === 'function' &&
      handle.constructor && handle.constructor.name === 'Server') {
    handle.once('connection', (socket) => {
      socket.end(line);
      handle.close();
      entry.ready = true;
      flush();
    });
  } else if (typeof handle.end === 'function') {
    handle.end(line);
    entry.ready = true;
    flush();
  } else {
    process.send({ unexpected: String(handle && handle.constructor && handle.constructor.name) });
    entry.ready = true;
    flush();
  }
});
process.on('disconnect', () => process.exit(0));
