"""The API under test: a local stand-in for https://api.example.com.

GET /health and /users answer 200; everything else 404. Prints
{"port": N} on stdout once listening. Standard library only.
"""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROUTES = {"/health": {"status": "ok"}, "/users": [{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}]}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ROUTES.get(self.path)
        if body is None:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
