"""A small Flask app for the WSGI tests (``app``), and a factory (``create_app()``)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/hello/<name>")
    def hello(name: str) -> str:
        return f"hello {name} {request.args.get('q', '')}"

    @app.post("/form")
    def form() -> str:
        return f"{request.method} {request.form.get('a')} {request.form.get('b')}"

    @app.post("/json")
    def echo_json() -> Response:
        return jsonify(got=request.get_json())

    @app.post("/upload")
    def upload() -> Response:
        data = request.files["file"].read()
        name = request.files["file"].filename
        return jsonify(name=name, size=len(data), sum=sum(data) % 65521)

    @app.get("/stream")
    def stream() -> Response:
        def parts() -> Iterator[bytes]:
            for i in range(5):
                yield f"part {i}\n".encode()

        return Response(parts(), mimetype="text/plain")

    @app.get("/cookies")
    def cookies() -> Response:
        response = Response(f"seen={request.cookies.get('seen', '')}")
        response.set_cookie("seen", "yes")
        return response

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("flask view failed")

    return app


app = create_app()
