#!/usr/bin/env python3
"""A tiny upstream for the demo: answers every request with a JSON report of what it received.

usage: echo_upstream.py NAME:PORT [NAME:PORT ...]
Binds 127.0.0.1 unless ECHO_BIND says otherwise (the docker-compose harness sets 0.0.0.0).
"""
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler_for(name):
    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            headers = {}
            for k, v in self.headers.items():
                headers.setdefault(k.lower(), []).append(v)
            body = json.dumps({"upstream": name, "method": self.command, "path": self.path,
                               "headers": headers}, indent=2).encode() + b"\n"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

        def log_message(self, *args):
            pass

    return Echo


def main():
    servers = []
    for spec in sys.argv[1:] or ["live:18080"]:
        name, port = spec.split(":")
        srv = ThreadingHTTPServer((os.environ.get("ECHO_BIND", "127.0.0.1"), int(port)), handler_for(name))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    threading.Event().wait()


if __name__ == "__main__":
    main()
