"""A local stand-in for the OpenAI chat completions API, for the example.

It listens on 127.0.0.1 on a free port, prints {"port": N} on stdout, and
answers POST /v1/chat/completions with a deterministic reply that echoes
the model, the temperature and the last user message, so results can be
checked. It needs only the Python standard library.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.send_error(404)
            return
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            self.send_error(401)
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        reply = f"[{body.get('model')} t={body.get('temperature')}] {user[:40]}"
        payload = json.dumps({
            "id": "chatcmpl-local",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        }).encode()
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
    sys.exit(0)
