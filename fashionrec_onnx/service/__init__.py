"""`fashionrec serve`: an HTTP JSON search service for shop backends (FastAPI on uvicorn).

The modules: `config` (what a worker needs, passed through the environment), `schemas` (request
and answer shapes), `errors` (library errors -> JSON with the right status), `metrics`
(Prometheus text), `searching` (what the routes do, without the framework), `app` (the FastAPI
app factory), `run` (checks and the uvicorn launcher), `tcp` (the workers' shared socket),
`upload_guard` (bounds upload bodies, for the service and the demo).
Nothing here is imported by ``import fashionrec_onnx``: FastAPI and uvicorn are the ``serve``
extra.
"""
