#!/usr/bin/env python3
"""Writes the seed inputs of the channel decoders' fuzz targets into tools/fuzz/corpus/.

Each seed is a script in the language of tools/fuzz/fuzz_script.hpp: the decoder's size limit,
then chunks of the stream, each with the number of descriptors that arrive with it. The seeds
cover what the decoders meet in use (valid frames and Node's own lines, with and without
descriptors, cut anywhere) and each error they report. Running this again writes the same
files; inputs that a fuzzing run added (named by their SHA-1) are left alone.

Usage: tools/fuzz/make_corpus.py [CORPUS_DIR]   (default: the corpus/ beside this file)
"""

import pathlib
import struct
import sys

DEFAULT_LIMIT = 0xFFFF  # the script's code for the channel's default (64 MiB)


def chunk(data, fds=0, hold=False):
    return (bytes(data), fds, hold)


def script(chunks, limit=DEFAULT_LIMIT):
    """The bytes of a script: the limit, then each chunk's control byte, length and bytes."""
    out = bytearray(struct.pack("<H", limit))
    for data, fds, hold in chunks:
        control = 0x80 if hold else 0
        extra = b""
        if fds >= 63:
            assert fds - 63 <= 255
            control |= 63
            extra = bytes([fds - 63])
        else:
            control |= fds
        if len(data) > 255:
            assert len(data) <= 0xFFFF
            control |= 0x40
            length = struct.pack("<H", len(data))
        else:
            length = bytes([len(data)])
        out += bytes([control]) + extra + length + data
    return bytes(out)


def one(data, fds=0, limit=DEFAULT_LIMIT):
    """A script of one chunk."""
    return script([chunk(data, fds)], limit)


def pieces(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


# --- native frames ----------------------------------------------------------------------------

def frame(payload, fds=0, reserved=b"\0\0", length=None):
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    return struct.pack("<IH", n, fds) + reserved + payload


def native_seeds():
    s = {}
    s["empty-stream"] = script([])
    s["empty-frame"] = one(frame(b""))
    s["one-frame"] = one(frame("hello"))
    s["one-frame-one-fd"] = one(frame("with a descriptor", 1), 1)
    s["one-frame-three-fds"] = one(frame("three", 3), 3)
    batch = frame("a", 1) + frame("b") + frame("c", 2) + frame(b"")
    s["batch-fds-on-first-byte"] = one(batch, 3)
    s["batch-byte-by-byte"] = script([chunk(batch[:1], 3)] +
                                     [chunk(b) for b in pieces(batch[1:], 1)])
    s["batch-held"] = script([chunk(p, 3 if i == 0 else 0, hold=True)
                              for i, p in enumerate(pieces(batch, 5))])
    header_splits = []
    for cut in range(1, 8):
        f = frame("split header %d" % cut, 1)
        header_splits += [chunk(f[:cut], 1), chunk(f[cut:])]
    s["header-cut-everywhere"] = script(header_splits)
    s["fd-before-its-frame"] = script([chunk(frame("first"), 1), chunk(frame("second", 1))])
    s["fds-in-empty-chunks"] = script([chunk(b"", 2), chunk(frame("x", 2)), chunk(b"", 0)])
    s["max-fds"] = one(frame("253", 253), 253)
    s["too-many-fds"] = one(frame("254", 254), 254)
    s["fds-missing"] = one(frame("needs two", 2), 1)
    s["fd-late"] = script([chunk(frame("late")[:8]), chunk(frame("late")[8:], 1)])
    s["fd-late-declared"] = script([chunk(frame("late", 1)[:8]), chunk(frame("late", 1)[8:], 1)])
    s["stray-fd-at-end"] = script([chunk(frame("no fd")), chunk(b"", 1)])
    s["cut-in-header"] = one(frame("cut")[:5])
    s["cut-in-payload"] = one(frame("cut in the payload", 1)[:12], 1)
    s["length-at-limit"] = one(frame("x" * 16), limit=16)
    s["length-over-limit"] = one(frame("x" * 17), limit=16)
    s["length-max-u32"] = one(frame(b"", length=0xFFFFFFFF))
    s["zero-limit"] = one(frame(b"") + frame("a"), limit=0)
    s["reserved-byte-6"] = one(frame("r", reserved=b"\1\0"))
    s["reserved-byte-7"] = one(frame("r", reserved=b"\0\x80"))
    s["error-then-more"] = script([chunk(frame("ok", 1), 1),
                                   chunk(frame("bad", reserved=b"\0\1"), 2),
                                   chunk(frame("after", 1), 1)])
    big = frame(bytes(range(256)) * 4, 2)
    s["big-payload-in-pieces"] = script([chunk(big[:300], 2)] +
                                        [chunk(p) for p in pieces(big[300:], 300)])
    many = b"".join(frame(str(i), i % 3) for i in range(40))
    s["many-frames"] = one(many, sum(i % 3 for i in range(40)))
    s["garbage-after-frame"] = one(frame("ok") + b"\xde\xad\xbe\xef")
    return s


# --- Node lines ---------------------------------------------------------------------------------

def lines(*texts, ending=b"\n"):
    return b"".join((t.encode() if isinstance(t, str) else t) + ending for t in texts)


USER = [
    '{"hello":"world","n":1,"arr":[1,2],"nested":{"a":null},"nan":null,"s":"é€😀"}',
    '"a string"', "42", "true", "false", "null", '{"a":1}', "[]", "{}", '""', "-0.5e-3",
    '{"from":"c-child","n":1}', '"a plain string"',
    '{"cmd":"NODE_"}', '{"cmd":"node_foo"}', '{"cmd":42}', '{"cmd":"NODE_HANDLE_ACK","cmd":"x"}',
    '"\\u2028 \\n \\ud83d\\ude00"', '"\u2028 raw"',
]
HANDLES = [
    '{"cmd":"NODE_HANDLE","type":"net.Socket","msg":{"kind":"client-socket"}}',
    '{"cmd":"NODE_HANDLE","type":"net.Socket","msg":{"kind":"server-side-socket"},'
    '"key":"4:127.0.0.1:0"}',
    '{"cmd":"NODE_HANDLE","type":"net.Server","msg":{"kind":"server"}}',
    '{"cmd":"NODE_HANDLE","type":"dgram.Socket","msg":{"kind":"udp"},"dgramType":"udp4"}',
    '{"cmd":"NODE_HANDLE","type":"net.Socket","msg":"keep"}',
    '{"cmd":"NODE_HANDLE","type":"dgram.Native","msg":1}',
    '{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_HANDLE","type":"net.Socket",'
    '"msg":{"nacked":true}}}',
    '{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn",'
    '"key":"4:0.0.0.0:8000","seq":3}}',
]
INTERNAL = [
    '{"cmd":"NODE_HANDLE_ACK"}', '{"cmd":"NODE_HANDLE_NACK"}',
    '{"cmd":"NODE_SOCKET_GET_COUNT","key":"4:127.0.0.1:0"}',
    '{"cmd":"NODE_SOCKET_NOTIFY_CLOSE","key":"4:127.0.0.1:0"}',
    '{"cmd":"NODE_SOCKET_ALL_CLOSED","key":"4:127.0.0.1:0"}',
    '{"cmd":"NODE_CLUSTER","act":"online","seq":0}', '{"cmd":"NODE_FOO"}',
    '{"cmd":"NODE\\u005fHANDLE_ACK"}',
]


def node_seeds():
    s = {}
    s["empty-stream"] = script([])
    s["user-messages"] = one(lines(*USER))
    s["user-messages-byte-by-byte"] = script([chunk(b) for b in pieces(lines(*USER[:4]), 1)])
    s["user-messages-held"] = script([chunk(p, hold=True) for p in pieces(lines(*USER), 7)])
    s["internal-messages"] = one(lines(*INTERNAL))
    # JSON.stringify writes a lone surrogate as an escape, and JSON.parse takes it back.
    s["lone-surrogate-escapes"] = one(lines('"\\ud800"', '{"a":"x\\udc00"}', '"\\ude00\\ud83d"'))
    for i, h in enumerate(HANDLES):
        s["handle-%d" % i] = one(lines(h), 1)
    s["handles-then-plain"] = script([chunk(lines(h), 1) for h in HANDLES] +
                                     [chunk(lines('{"after":1}'))])
    # The kernel ends a read right after the segment that carries descriptors, and merges
    # plain segments before it: "A\n" + "B\n"+fd came as one read.
    s["plain-merged-before-handle"] = script([chunk(lines('"A"', HANDLES[0]), 1),
                                              chunk(lines('"C"'))])
    s["handle-line-in-pieces"] = script([chunk(lines(HANDLES[1])[:20], 1)] +
                                        [chunk(p) for p in pieces(lines(HANDLES[1])[20:], 9)])
    s["fd-early"] = script([chunk(lines('{"pre":1}'), 1), chunk(lines(HANDLES[0]))])
    s["fd-late"] = script([chunk(lines(HANDLES[0])), chunk(b"", 1)])
    s["handle-without-fd"] = one(lines('"before"', HANDLES[0], '"after"'))
    s["two-fds-one-handle"] = script([chunk(lines(HANDLES[2]), 2), chunk(lines('"next"'))])
    s["stray-fd"] = script([chunk(lines('"x"'), 1), chunk(lines('"y"'))])
    s["stray-fd-at-end"] = one(lines('"x"'), 1)
    envelope = '{"cmd":"NODE_HANDLE","type":%s,"msg":%s}'
    s["unknown-handle-type"] = one(lines(envelope % ('"net.Foo"', "1")), 1)
    s["handle-type-not-string"] = one(lines(envelope % ("7", "1")), 1)
    s["handle-without-msg"] = one(lines('{"cmd":"NODE_HANDLE","type":"net.Socket"}'), 1)
    s["nested-envelope-broken"] = one(lines(
        envelope % ('"net.Native"', '{"cmd":"NODE_HANDLE","type":"net.Socket"}')), 1)
    s["nested-envelope-inner-type-bad"] = one(lines(
        envelope % ('"net.Native"', envelope % ('"tty"', "0"))), 1)
    s["crlf"] = one(lines(*USER[:5], ending=b"\r\n"))
    s["crlf-handle"] = one(lines(HANDLES[0], ending=b"\r\n"), 1)
    s["spaces-around"] = one(b'  {"a" : [ 1 , 2 ] }\t \n \t"x"\r\n')
    s["invalid-utf8"] = one(b'"\xff"\n"\xc3"\n"\xc0\xaf"\n"\xed\xa0\x80"\n"\xf4\x90\x80\x80"\n'
                            b'{"\xe2\x82":"\xf0\x9f\x98"}\n')
    s["invalid-utf8-in-handle"] = one(
        b'{"cmd":"NODE_HANDLE","type":"net.Socket","msg":"\xfe\xff"}\n', 1)
    euro = lines('"€😀"')
    s["utf8-split-across-chunks"] = script([chunk(euro[:2]), chunk(euro[2:5]), chunk(euro[5:])])
    s["empty-line"] = one(b'"ok"\n\n"never"\n')
    s["whitespace-line"] = one(b'"ok"\n \t\r\n')
    s["not-json"] = one(b'{"partial":1}\n{not json}\n{"ok":1}\n')
    s["two-texts-one-line"] = one(b"1 2\n")
    s["bom"] = one(b'\xef\xbb\xbf"x"\n')
    s["nul-byte"] = one(b'"a\x00b"\n"\\u0000"\n')
    # JSON.parse takes numbers beyond a double or a 64-bit integer (as Infinity, or rounded).
    s["big-numbers"] = one(lines("123456789012345680000", "1e400", "-1e400", "1e-400",
                                 '{"n":123456789012345680000,"m":[1e400]}',
                                 "18446744073709551616", "-9223372036854775809", "0.1e99999"))
    s["bad-numbers"] = one(lines("01", "1.", "+1", ".5", "1e", "NaN", "Infinity"))
    s["deep-nesting"] = one(lines("[" * 100 + "]" * 100, '{"a":' * 60 + "0" + "}" * 60))
    s["very-deep-nesting"] = one(lines("[" * 1100 + "]" * 1100))
    s["cut-line-at-end"] = one(b'"done"\n{"cut":')
    s["trailing-whitespace-at-end"] = one(b'"done"\n  \r')
    s["line-at-limit"] = one(lines('"' + "x" * 14 + '"'), limit=16)
    s["line-over-limit"] = one(lines('"' + "x" * 15 + '"'), limit=16)
    s["line-over-limit-in-pieces"] = script(
        [chunk(p) for p in pieces(lines('"' + "x" * 40 + '"'), 6)], limit=16)
    s["ack-nack-lines"] = script([chunk(lines('{"cmd":"NODE_HANDLE_ACK"}')),
                                  chunk(lines('{"cmd":"NODE_HANDLE_NACK"}'))])
    s["error-then-more"] = script([chunk(lines('"ok"'), 0), chunk(b"{bad}\n", 1),
                                   chunk(lines(HANDLES[0]), 1)])
    big = lines('{"big":"' + "y" * 700 + '"}')
    s["long-line"] = script([chunk(big[:300])] + [chunk(p) for p in pieces(big[300:], 250)])
    return s


def main():
    here = pathlib.Path(__file__).resolve().parent
    root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else here / "corpus"
    total = 0
    for target, seeds in (("native", native_seeds()), ("node", node_seeds())):
        folder = root / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / ("seed-" + name)).write_bytes(data)
            total += len(data)
        print(f"{folder}: {len(seeds)} seeds")
    print(f"{total} bytes")


if __name__ == "__main__":
    main()
