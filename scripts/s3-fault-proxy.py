#!/usr/bin/env python3
"""A fault-injecting HTTP proxy for S3 tests: in front of moto, it answers some requests with
503 SlowDown, cuts some connections without an answer, and can fail every part upload after a
number of successful ones (the server "gone for good" for data). One request per connection.

    s3-fault-proxy.py --upstream PORT [--fail-every N] [--drop-every M] [--lose-reply-every L]
                      [--fail-parts-after K] [--delay S] [--stats FILE] [--log FILE]
                      [--fail-match SUB --fail-first N [--fail-method M]] [--short-match SUB --short-first N]
                      [--cut-match SUB --cut-first N] [--hold-match SUB --hold S [--hold-method M]]
                      [--lose-match SUB --lose-first N [--lose-method M]]
                      [--drop-header NAME --drop-header-match SUB [--drop-header-method M]]
                      [--trickle-match SUB --trickle-rate B] [--hold-reply]

--fail-match SUB --fail-first N answers 503 SlowDown to the first N requests whose path (bucket/key,
no query) contains SUB, of method M only with --fail-method M (HEAD, GET): one object's brown-out.
--short-match SUB --short-first N forwards the first N successful GETs whose path contains SUB and
sends only the first half of the answer's body, with a Content-Length that agrees (a consistent
short read no HTTP client can notice by itself).
--cut-match SUB --cut-first N does the same but announces the whole body and then resets the connection
after its first half (a transfer cut mid-body).
--hold-match SUB --hold S holds the requests whose path (or query: "list-type=2" holds listings)
contains SUB (of method M only with
--hold-method M) S seconds before forwarding them, and prints "HELD <method> <path>" on stdout as
one arrives: a slow upload or download, with a way to know the client is waiting on it.
With --hold-reply the request is forwarded first (it takes effect) and its answer is held instead:
a write that landed while the client still waits.
--trickle-match SUB --trickle-rate B sends the answer to every GET whose path contains SUB with its
headers at once and its body at B bytes per second: a server that never stalls long enough to time
out, yet never finishes. Prints "TRICKLE <path>" as each begins.

--lose-reply-every L forwards every L-th request to the server (so it takes effect) and then cuts
the connection without the answer: the client sees a lost reply and retries.
--lose-match SUB --lose-first N does the same to the first N requests whose path contains SUB (of
method M only with --lose-method M): a write that lands while every answer to it is lost.
--drop-header NAME --drop-header-match SUB removes the header NAME from the answers to requests whose
path contains SUB (of method M only with --drop-header-method M): a gateway that drops Content-Length.

--delay S waits S seconds before answering each request (WAN latency). --stats FILE keeps, after
every request, a JSON object there: per object path (bucket/key, no query), the number of GET
requests and the body bytes they returned ("get_bytes"), and the number of other requests; how the
tests prove a restore reads each stored byte once. --log FILE appends one line per answered request:
the time it arrived (seconds since the proxy started), method, path, request body bytes, answer
status, answer body bytes, and the seconds the server took (the --delay not included); where the
time of a WAL push or fetch goes, request by request.

Prints PORT=<listening port> once ready. Counts are per proxy run; it stops on SIGTERM."""
import argparse, json, os, socket, socketserver, struct, sys, threading, time, urllib.parse

parser = argparse.ArgumentParser()
parser.add_argument("--upstream", type=int, required=True)
parser.add_argument("--fail-every", type=int, default=0)
parser.add_argument("--drop-every", type=int, default=0)
parser.add_argument("--lose-reply-every", type=int, default=0)
parser.add_argument("--fail-parts-after", type=int, default=-1)
parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering each request")
parser.add_argument("--stats", help="file to keep per-object request and GET byte counts in (JSON)")
parser.add_argument("--log", help="file to append one line per request to: arrival, method, path, bytes, status, server seconds")
def fault(name, what, counted=True, method=False):
    """One fault's options: --NAME-match (a path substring), --NAME-first (how many), --NAME-method."""
    parser.add_argument(f"--{name}-match", help=what)
    if counted:
        parser.add_argument(f"--{name}-first", type=int, default=0)
    if method:
        parser.add_argument(f"--{name}-method", help=f"with --{name}-match: only requests of this method")

fault("fail", "answer 503 to the first --fail-first requests whose path contains this", method=True)
fault("short", "halve the body of the first --short-first GETs whose path contains this")
fault("cut", "reset the connection halfway through the body of the first --cut-first GETs whose path contains this")
fault("hold", "hold requests whose path contains this --hold seconds, printing HELD lines", counted=False, method=True)
parser.add_argument("--hold", type=float, default=0.0)
fault("lose", "forward the first --lose-first requests whose path contains this, then cut the connection without the answer", method=True)
parser.add_argument("--drop-header", help="remove this header from the answers to requests matching --drop-header-match")
fault("drop-header", "path substring of the requests whose answers lose --drop-header", counted=False, method=True)
parser.add_argument("--hold-reply", action="store_true", help="with --hold-match: forward first, then hold the answer")
fault("trickle", "send the body of GETs whose path contains this at --trickle-rate bytes per second", counted=False)
parser.add_argument("--trickle-rate", type=float, default=1.0)
args = parser.parse_args()
started = time.monotonic()
lock = threading.Lock()
state = {"requests": 0, "parts": 0, "failed": 0, "shortened": 0, "cut": 0, "lost": 0}
stats = {}

def take(counter, match, first, path):
    """Whether this request is one of the first `first` whose path contains `match` (counts it)."""
    if not match or match not in path:
        return False
    with lock:
        if state[counter] >= first:
            return False
        state[counter] += 1
        return True

def record(method, target, body_bytes):
    """Counts one answered request against its object path; rewrites --stats atomically."""
    if not args.stats:
        return
    path = urllib.parse.unquote(urllib.parse.urlsplit(target).path.lstrip("/"))
    with lock:
        entry = stats.setdefault(path, {"gets": 0, "get_bytes": 0, "other": 0})
        if method == "GET":
            entry["gets"] += 1
            entry["get_bytes"] += body_bytes
        else:
            entry["other"] += 1
        temporary = args.stats + ".tmp"
        with open(temporary, "w") as out:
            json.dump(stats, out, sort_keys=True)
        os.replace(temporary, args.stats)

def open_upstream(head, body):
    """Sends a request on to the server with Connection: close (its end of the answer ends the answer)."""
    lines = [l for l in head.split(b"\r\n") if not l.lower().startswith(b"connection:")] + [b"Connection: close"]
    upstream = socket.create_connection(("127.0.0.1", args.upstream))
    upstream.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    return upstream

def read_answer(upstream):
    """The server's whole answer (head and body, as sent), once it has closed the connection."""
    answer = bytearray()
    while True:
        chunk = upstream.recv(1 << 20)
        if not chunk:
            break
        answer += chunk
    upstream.close()
    return bytes(answer)

def read_request(conn):
    # bytearray: appending to bytes copies the whole body per chunk (quadratic: 0.1 s per 5 MiB).
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = bytearray(rest)
    while len(body) < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return None
        body += chunk
    return head, bytes(body)

_BODY = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
SLOWDOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: "
            + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)

class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        request = read_request(self.request)
        if request is None:
            return
        head, body = request
        arrived = time.monotonic()
        if args.delay:
            time.sleep(args.delay)
        first = head.split(b"\r\n")[0]
        is_part = first.startswith(b"PUT ") and b"partNumber=" in first
        with lock:
            state["requests"] += 1
            number = state["requests"]
            if is_part:
                state["parts"] += 1
            parts = state["parts"]
        if is_part and args.fail_parts_after >= 0 and parts > args.fail_parts_after:
            self.request.sendall(SLOWDOWN)
            return
        if args.drop_every and number % args.drop_every == 0:
            self.request.shutdown(socket.SHUT_RDWR)
            return
        if args.fail_every and number % args.fail_every == 0:
            self.request.sendall(SLOWDOWN)
            return
        method, _, rest = first.decode("latin-1").partition(" ")
        target = rest.rpartition(" ")[0]
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path.lstrip("/"))
        if (not args.fail_method or method == args.fail_method) and take("failed", args.fail_match, args.fail_first, path):
            self.request.sendall(SLOWDOWN)
            return
        holding = bool(args.hold_match and (args.hold_match in path or args.hold_match in urllib.parse.unquote(target))
                    and (not args.hold_method or method == args.hold_method))
        if holding and not args.hold_reply:
            with lock:
                print(f"HELD {method} {path}", flush=True)
            time.sleep(args.hold)
        if method == "GET" and args.trickle_match and args.trickle_match in path:
            self.forward_trickling(head, body, path, target)
            return
        if method == "GET" and args.short_match and args.short_match in path:
            self.forward_short(head, body, path, target)
            return
        if method == "GET" and args.cut_match and args.cut_match in path:
            self.forward_short(head, body, path, target, cut=True)
            return
        sent = time.monotonic()
        upstream = open_upstream(head, body)
        if holding and args.hold_reply:
            answer = read_answer(upstream)
            record(method, target, len(answer.partition(b"\r\n\r\n")[2]))
            with lock:
                print(f"HELD {method} {path}", flush=True)
            time.sleep(args.hold)
            try:
                self.request.sendall(answer)
            except OSError:
                pass
            return
        lose = (not args.lose_method or method == args.lose_method) and take("lost", args.lose_match, args.lose_first, path)
        if lose or (args.lose_reply_every and number % args.lose_reply_every == 0):
            # Let the server finish the request (it has taken effect), then lose its answer.
            while upstream.recv(65536):
                pass
            upstream.close()
            self.request.shutdown(socket.SHUT_RDWR)
            return
        if (args.drop_header and args.drop_header_match and args.drop_header_match in path
                and (not args.drop_header_method or method == args.drop_header_method)):
            self.forward_without_header(upstream, method, target)
            return
        answer_head = b""
        body_bytes = 0
        # The last chunk is held back until the request is counted: a client that has its whole
        # answer (and a test reading --stats after it) never sees a count that is not there yet.
        held = b""
        while True:
            chunk = upstream.recv(65536)
            if not chunk:
                break
            if body_bytes == 0 and b"\r\n\r\n" not in answer_head:
                answer_head += chunk
                if b"\r\n\r\n" in answer_head:
                    body_bytes = len(answer_head.partition(b"\r\n\r\n")[2])
            else:
                body_bytes += len(chunk)
            if held:
                self.request.sendall(held)
            held = chunk
        upstream.close()
        record(method, target, body_bytes)
        if held:
            self.request.sendall(held)
        if args.log:
            status = answer_head.split(b" ", 2)[1].decode("latin-1") if answer_head.count(b" ") >= 2 else "?"
            with lock, open(args.log, "a") as out:
                out.write(f"{arrived - started:.3f} {method} {target} {len(body)} {status} {body_bytes} {time.monotonic() - sent:.3f}\n")

    def forward_without_header(self, upstream, method, target):
        """Reads the whole answer and sends it without the --drop-header header (counted as the plain path does)."""
        answer_head, _, answer_body = read_answer(upstream).partition(b"\r\n\r\n")
        name = args.drop_header.lower().encode()
        kept = [l for l in answer_head.split(b"\r\n") if l.partition(b":")[0].strip().lower() != name]
        record(method, target, len(answer_body))
        self.request.sendall(b"\r\n".join(kept) + b"\r\n\r\n" + answer_body)

    def forward_short(self, head, body, path, target, cut=False):
        """Forwards a GET whose path matches --short-match; if it succeeded and is one of the first
        --short-first, sends half its body with a matching Content-Length. Counts the GET (with the
        body bytes it sends) before sending, as the plain path does.
        With cut (--cut-match, --cut-first): the whole body's Content-Length, then a reset after half."""
        answer_head, _, answer_body = read_answer(open_upstream(head, body)).partition(b"\r\n\r\n")
        status = answer_head.split(b" ", 2)[1] if answer_head.count(b" ") >= 2 else b"?"
        if cut and status[:1] == b"2" and take("cut", args.cut_match, args.cut_first, path):
            half = answer_body[: len(answer_body) // 2]
            record("GET", target, len(half))
            self.request.sendall(answer_head + b"\r\n\r\n" + half)
            # SO_LINGER 0: close sends a reset, not an orderly end of the stream.
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.request.close()
            return
        if not cut and status[:1] == b"2" and take("shortened", args.short_match, args.short_first, path):
            answer_body = answer_body[: len(answer_body) // 2]
            header_lines = [l for l in answer_head.split(b"\r\n") if not l.lower().startswith(b"content-length")]
            answer_head = b"\r\n".join(header_lines + [b"Content-Length: " + str(len(answer_body)).encode()])
        record("GET", target, len(answer_body))
        self.request.sendall(answer_head + b"\r\n\r\n" + answer_body)

    def forward_trickling(self, head, body, path, target):
        """Forwards a GET whose path matches --trickle-match and sends its answer's body at
        --trickle-rate bytes per second, until done or the client hangs up."""
        answer_head, _, answer_body = read_answer(open_upstream(head, body)).partition(b"\r\n\r\n")
        record("GET", target, len(answer_body))
        with lock:
            print(f"TRICKLE {path}", flush=True)
        step = max(1, int(args.trickle_rate / 10))
        try:
            self.request.sendall(answer_head + b"\r\n\r\n")
            for offset in range(0, len(answer_body), step):
                self.request.sendall(answer_body[offset:offset + step])
                time.sleep(step / args.trickle_rate)
        except OSError:
            pass

class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: eight workers connecting at once (wal-fetch
    # --prefetch 8, wal-push --async) overflowed it, and the dropped SYN came back after the
    # kernel's 1 s retransmission, a stall of the proxy's making that S3 does not have.
    request_queue_size = 128

server = Server(("127.0.0.1", 0), Handler)
print(f"PORT={server.server_address[1]}", flush=True)
server.serve_forever()
