#!/usr/bin/env python3
"""A fault-injecting HTTP proxy for S3 tests: in front of moto, it answers some requests with
503 SlowDown, cuts some connections without an answer, and can fail every part upload after a
number of successful ones (the server "gone for good" for data). One request per connection.

    s3-fault-proxy.py --upstream PORT [--fail-every N] [--drop-every M] [--lose-reply-every L]
                      [--fail-parts-after K] [--delay S]

--lose-reply-every L forwards every L-th request to the server (so it takes effect) and then cuts
the connection without the answer: the client sees a lost reply and retries.

Prints PORT=<listening port> once ready. Counts are per proxy run; it stops on SIGTERM."""
import argparse, socket, socketserver, sys, threading, time

parser = argparse.ArgumentParser()
parser.add_argument("--upstream", type=int, required=True)
parser.add_argument("--fail-every", type=int, default=0)
parser.add_argument("--drop-every", type=int, default=0)
parser.add_argument("--lose-reply-every", type=int, default=0)
parser.add_argument("--fail-parts-after", type=int, default=-1)
parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering each request")
args = parser.parse_args()
lock = threading.Lock()
state = {"requests": 0, "parts": 0}

def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head, body

_BODY = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
SLOWDOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: "
            + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)

class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        request = read_request(self.request)
        if request is None:
            return
        head, body = request
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
        lines = head.split(b"\r\n")
        lines = [l for l in lines if not l.lower().startswith(b"connection:")] + [b"Connection: close"]
        upstream = socket.create_connection(("127.0.0.1", args.upstream))
        upstream.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        if args.lose_reply_every and number % args.lose_reply_every == 0:
            # Let the server finish the request (it has taken effect), then lose its answer.
            while upstream.recv(65536):
                pass
            upstream.close()
            self.request.shutdown(socket.SHUT_RDWR)
            return
        while True:
            chunk = upstream.recv(65536)
            if not chunk:
                break
            self.request.sendall(chunk)
        upstream.close()

class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

server = Server(("127.0.0.1", 0), Handler)
print(f"PORT={server.server_address[1]}", flush=True)
server.serve_forever()
