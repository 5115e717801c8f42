"""`mambacast serve`: the HTTP forecast service (FastAPI + uvicorn, the `serve` extra).

Import `mambacast.serve.app.create_app` for the ASGI app; this package's modules import FastAPI, so the
core package never imports them (the CLI does, only for `serve`).
"""
