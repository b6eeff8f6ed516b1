#!/usr/bin/python3
"""Test rig: a stand-in for a practice's CMS behind website_privacy's reverse proxy.

It answers what a careless CMS answers: third-party tags written its own way (single quotes),
DNS prefetch and preconnect links to third parties, its own weak security headers and version
banners, a Link header, and gzip when the client accepts it (nginx's sub_filter cannot rewrite compressed HTML). 127.0.0.1:8080 only."""

import gzip
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = """<!DOCTYPE html>
<html lang="fr"><head><meta charset="utf-8"><title>Cabinet (CMS)</title>
<link rel='dns-prefetch' href='//stats.msp-mesure.example'>
<link rel="preconnect" href="https://www.youtube-nocookie.com">
<script src="https://stats.msp-mesure.example/matomo.js" async></script>
</head><body><h1>Cabinet dentaire (CMS)</h1>
<p>Une page produite par le CMS du cabinet.</p>
<iframe src='https://www.youtube-nocookie.com/embed/cms' title='Vidéo' width='560' height='315'></iframe>
</body></html>
"""


class Handler(BaseHTTPRequestHandler):
    server_version = "Apache/2.4.1 (Unix) PHP/5.6.40"

    def log_message(self, *args):
        return

    def do_GET(self):
        if self.path not in ("/", "/index.php"):
            self.send_error(404)
            return
        body = PAGE.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Security-Policy", "default-src * 'unsafe-inline' 'unsafe-eval'")
        self.send_header("X-Powered-By", "PHP/5.6.40")
        self.send_header("X-Frame-Options", "ALLOWALL")
        self.send_header("Link", "<https://www.youtube-nocookie.com>; rel=preconnect")
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", 8080), Handler).serve_forever()
