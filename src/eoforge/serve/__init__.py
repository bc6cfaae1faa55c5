"""``eoforge serve``: a model package behind a REST API (FastAPI under uvicorn) with a map page.

Endpoints: ``GET /health``, ``GET /model`` (the STAC MLM item), ``POST /predict`` (GeoTIFF in, class-map
GeoTIFF or JSON counts/areas out), ``POST /jobs`` + ``GET /jobs/{id}`` + ``GET /jobs/{id}/result`` (+
``/preview`` for the map page) for large scenes, ``GET /`` (the map page), OpenAPI docs at ``/docs``.

Every prediction runs through :func:`eoforge.predict.predict_scene` (the one inference path) in a bounded
thread pool. Admission happens before the upload is read (an ASGI guard): at most ``workers`` predictions run
and ``queue`` more wait; beyond that the answer is 503 with ``Retry-After``. Uploads stream to a server-made
folder under a private temporary directory (no client-given name or path is ever used on disk) and are cut
off with 413 past ``max_upload_mb``.
"""

from __future__ import annotations

from eoforge.serve.app import ServeSettings, create_app, run_server

__all__ = ["ServeSettings", "create_app", "run_server"]
