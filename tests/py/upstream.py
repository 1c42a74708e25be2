#!/usr/bin/env python3
"""A bring-your-own engine for tests: an HTTP server that answers after a delay.

`colo deploy APP --engine-cmd 'python3 tests/py/upstream.py --port {port} --delay-ms 300'`
runs it as each machine's engine. It answers GET /health with 200, and any POST with a JSON
body naming its port after --delay-ms; a POST whose JSON asks for "stream": true gets
server-sent events instead: --events events, --delay-ms apart, then [DONE]. Requests are
counted, and GET /count returns the count, so tests can see where traffic went. With
--ledger FILE, the "prompt" of each POST is appended to FILE as a line when its execution
starts (engines of one test may share the file), so a test can see that nothing ran twice.
Each answer carries a colo-load header; --load-without-self leaves the answered request out of
it, as colo's engine does.
"""

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--events", type=int, default=3)
    parser.add_argument("--ledger")
    # By default a whole answer's colo-load counts the request being answered; with this flag
    # only the others still running, as colo's engine counts them once a request is done.
    parser.add_argument("--load-without-self", action="store_true")
    args = parser.parse_args()
    ledger = os.open(args.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if args.ledger else None
    delay = args.delay_ms / 1000.0
    lock = threading.Lock()
    count = [0]
    in_flight = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
        # holds the body until the edge's delayed ACK, 40 ms later.
        disable_nagle_algorithm = True

        def log_message(self, *_):
            pass

        def answer(self, status, body, content_type="application/json", finishing=0):
            data = body.encode()
            self.send_response(status)
            self.send_header("content-type", content_type)
            # The load header colo's engine sends; edges share it between regions.
            self.send_header("colo-load", f"running={in_flight[0] - finishing};waiting=0")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.answer(200, '{"status":"ok"}')
            elif self.path == "/count":
                self.answer(200, json.dumps({"count": count[0]}))
            else:
                self.answer(200, json.dumps({"port": args.port, "path": self.path}))

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            with lock:
                count[0] += 1
                in_flight[0] += 1
            try:
                self.post(raw)
            finally:
                with lock:
                    in_flight[0] -= 1

        def post(self, raw):
            try:
                request = json.loads(raw or b"{}")
            except ValueError:
                request = {}
            if ledger is not None and isinstance(request, dict) and isinstance(request.get("prompt"), str):
                # One write per line: appends from several engines do not interleave.
                os.write(ledger, (request["prompt"] + "\n").encode())
            if isinstance(request, dict) and request.get("stream"):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i in range(args.events):
                    time.sleep(delay)
                    self.chunk(f"data: {json.dumps({'port': args.port, 'event': i})}\n\n")
                self.chunk("data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            time.sleep(delay)
            finishing = 1 if args.load_without_self else 0
            self.answer(200, json.dumps({"port": args.port, "bytes": len(raw)}), finishing=finishing)

        def chunk(self, text):
            data = text.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 4096

    Server((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
