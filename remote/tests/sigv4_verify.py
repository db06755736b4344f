"""A remote-write / query endpoint that checks every request's SigV4 signature with botocore
(the AWS SDK for Python's own signer), on 127.0.0.1: 200 with an empty matrix when the
signature is the one botocore computes for the same request, 403 with the reason otherwise.

    python3 sigv4_verify.py ACCESS_KEY SECRET_KEY REGION SERVICE PORT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qsl, quote, urlencode

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS, SECRET, REGION, SERVICE, PORT = sys.argv[1:6]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("content-type", "application/json" if code == 200 else "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def check(self, method):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        auth = self.headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return self.answer(403, "no SigV4 signature: %r" % auth)
        parts = dict(p.strip().split("=", 1) for p in auth.split(" ", 1)[1].split(","))
        signed = parts["SignedHeaders"].split(";")
        headers = {h: self.headers.get(h) for h in signed}
        # As AWS does on its side: the query as received, decoded and encoded again the one
        # canonical way (botocore's signer expects a URL so prepared).
        path, _, query = self.path.partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(pairs, quote_via=lambda s, *_: quote(s, safe="-_.~"))
        url = "http://%s%s%s" % (self.headers.get("host"), path, "?" + query if query else "")
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        request.context["timestamp"] = self.headers.get("x-amz-date")
        signer = SigV4Auth(Credentials(ACCESS, SECRET), SERVICE, REGION)
        # add_auth's own steps, with the request's date instead of the clock's.
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        scope = "%s/%s/%s/%s/aws4_request" % (
            ACCESS, request.context["timestamp"][:8], REGION, SERVICE)
        if parts.get("Signature") != expected or parts.get("Credential") != scope:
            return self.answer(403, "signature mismatch\ncanonical request:\n%s\ngot: %s" % (canonical, auth))
        self.answer(200, json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}))

    def do_GET(self):
        self.check("GET")

    def do_POST(self):
        self.check("POST")


HTTPServer(("127.0.0.1", int(PORT)), Handler).serve_forever()
