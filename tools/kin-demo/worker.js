// kin-demo's Node.js worker (`kin-demo --worker node`): plain Node, started by kin::fork with
// the Node codec, so each connection the parent hands over arrives through Node's own IPC as
// `process.on('message', (message, socket) => ...)`. It answers as the native worker does and
// exits once the parent closes the channel and its connections are done.
'use strict';

const requestTimeoutMs = 3000;  // a request's headers must arrive within this time
const requestLimit = 16 * 1024; // and within this many bytes

function response(status, body) {
  return `HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\n` +
         `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

const answer = response('200 OK', `Child ${process.pid} handled it.\n`);
const idle = new Set();  // connections that have sent nothing yet

process.on('message', (message, socket) => {
  if (!socket || !message || message.type !== 'connection') return;
  let request = '';
  let answered = false;
  idle.add(socket);
  const reply = (text) => {
    answered = true;
    socket.end(text);  // half-closes; Node closes the socket once the client ends too
  };
  socket.setTimeout(requestTimeoutMs, () => {
    if (answered || request === '') {
      socket.destroy();
    } else {
      reply(response('408 Request Timeout', 'Timed out.\n'));
    }
  });
  socket.on('data', (chunk) => {
    idle.delete(socket);
    if (answered) return;  // the rest of the request: read and dropped
    const from = Math.max(0, request.length - 3);
    request += chunk.toString('latin1');
    if (request.indexOf('\r\n\r\n', from) >= 0 || request.indexOf('\n\n', from) >= 0) {
      request = '';
      reply(answer);
    } else if (request.length > requestLimit) {
      request = '';
      reply(response('431 Request Header Fields Too Large', 'Too large.\n'));
    }
  });
  socket.on('error', () => socket.destroy());
  socket.on('close', () => idle.delete(socket));
});

// The parent closed the channel: connections that have sent nothing are closed, the others
// are answered; then nothing keeps Node running and it exits.
process.on('disconnect', () => {
  for (const socket of idle) socket.destroy();
});

// Ctrl-C in a terminal reaches the whole process group; the parent decides when workers stop.
process.on('SIGINT', () => {});
// SIGTERM sent to this worker alone: it leaves the parent's rotation and finishes what it has.
process.on('SIGTERM', () => {
  if (process.connected) process.disconnect();
});
