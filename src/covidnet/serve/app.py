"""``covidnet serve``: an HTTP triage service (FastAPI + uvicorn) over a checkpoint or an exported ONNX
model, with a single-page web UI. A research tool, not a diagnosis: every response and the page say so.

Endpoints: ``POST /v1/predict`` (an image or DICOM, as multipart ``file`` or as the raw body) -> label,
class probabilities, triage decision, model id and version; ``?cam=1`` adds a Grad-CAM overlay (PNG,
base64), ``?preview=1`` the preprocessed image the model saw. ``GET /v1/model``, ``GET /healthz``,
OpenAPI at ``/openapi.json`` (and ``/docs``), the page at ``/``.

Safety, by construction rather than by convention:

- the body is read in chunks and refused with 413 past ``max_upload_mb`` (before reading, when
  Content-Length says so); it is held in memory only, never written to disk unless ``keep_uploads``;
- magic bytes decide what a file is (PNG, JPEG, WebP, DICOM), never its name or declared type: 415;
- images of more than ``max_pixels`` are refused from their header, before decoding (decompression
  bombs): 413;
- no DICOM header field reaches a response or a log: the reader is given a neutral name, decoder
  details of DICOM failures are dropped, and pydicom's value warnings are switched off;
- at most ``queue_size`` requests in flight, 503 (with Retry-After) beyond; ``timeout_s`` per
  request, 504 past it; an optional bearer token (401); CORS off unless origins are given.

Errors are JSON: ``{"error": {"status", "code", "message"}, "request_id"}``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import html
import io
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import DISCLAIMER, __version__
from ..config import option
from ..errors import ConfigError, CovidnetError, ImageReadError, ImageTooLargeError
from ..runtime import LoadedModel, load_either
from ..tasks import decide, softmax, triage_rule
from .batcher import DynamicBatcher

log = logging.getLogger("covidnet.serve")


@dataclass
class ServeConfig:
    checkpoint: str | None = option(None, "a PyTorch checkpoint (heat maps available)")
    onnx: str | None = option(None, "a model written by `covidnet export` (no PyTorch needed)", metavar="MODEL")
    host: str = option("127.0.0.1", "interface to listen on (default 127.0.0.1, this machine only)")
    port: int = option(8000, "port to listen on")
    device: str = option("auto", "auto, cpu, cuda")
    # clients send "Authorization: Bearer TOKEN" to /v1/*
    token: str | None = option(None, "require 'Authorization: Bearer TOKEN' on /v1/* (or set COVIDNET_TOKEN)")
    max_upload_mb: float = option(32.0, "larger request bodies get 413")
    # a 7000 x 8500 radiograph; far above any chest X-ray detector
    max_pixels: int = option(60_000_000, "larger images get 413 before decoding (default 60 million)")
    max_batch: int | None = option(
        None,
        "dynamic batching: up to this many waiting requests share a forward pass; "
        "1 turns it off (default: 16 on a GPU, 1 on a CPU, where batches are slower per "
        "image)",
    )  # None: see create_app
    batch_wait_ms: float = option(2.0, "how long a batch waits for more requests")
    queue_size: int = option(64, "requests in flight before 503")
    timeout_s: float = option(60.0, "per-request limit, 504 past it")
    threshold: str | None = option(None, "triage rule, as for predict", metavar="CLASS=P")
    operating_point: str | None = option(
        None, "triage by the checkpoint's stored operating point", metavar="sensitivity=0.95"
    )
    cors_origin: list[str] = option(
        help="allow this browser origin (repeatable; CORS is off by default)", default_factory=list, metavar="ORIGIN"
    )
    keep_uploads: str | None = option(
        None,
        "write each upload to DIR, named by request id (default: uploads are never written to disk)",
        metavar="DIR",
    )
    threads: int | None = option(
        None, "CPU threads of a forward pass (default: all cores; fewer leaves cores to decoding uploads)"
    )

    def validate(self) -> ServeConfig:
        checks = [
            (self.max_upload_mb > 0, "--max-upload-mb must be > 0"),
            (self.max_pixels > 0, "--max-pixels must be > 0"),
            (self.max_batch is None or self.max_batch >= 1, "--max-batch must be >= 1"),
            (self.batch_wait_ms >= 0, "--batch-wait-ms must be >= 0"),
            (self.queue_size >= 1, "--queue-size must be >= 1"),
            (self.timeout_s > 0, "--timeout-s must be > 0"),
            (0 <= self.port <= 65535, f"--port {self.port}: not a port number"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.keep_uploads and not Path(self.keep_uploads).is_dir():
            raise ConfigError(f"--keep-uploads {self.keep_uploads}: folder not found")
        return self


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# --- what an upload is ------------------------------------------------------------------------------

_DICOM_TYPES = ("application/dicom", "application/dicom+binary")


def sniff(data: bytes, declared_type: str = "", filename: str = "") -> str | None:
    """The format the bytes are (png, jpeg, webp, dicom), by their magic numbers; None otherwise. A DICOM
    without its 128-byte preamble is accepted only when declared as DICOM (type or .dcm name)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[128:132] == b"DICM":
        return "dicom"
    declared_dicom = declared_type.split(";")[0].strip().lower() in _DICOM_TYPES or filename.lower().endswith(
        (".dcm", ".dicom")
    )
    if declared_dicom and data[:2] in (b"\x02\x00", b"\x08\x00"):  # the first tag of group 0002 or 0008
        return "dicom"
    return None


def _safe_message(e: CovidnetError, kind: str) -> str:
    """A reader's message for a client: a DICOM's decoder details (which can quote header values) are dropped."""
    message = str(e)
    return re.sub(r"\s*\(.*\)\s*$", "", message) if kind == "dicom" else message


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, "payload_too_large", f"upload of {int(length):,} bytes; the limit is {limit:,}")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "payload_too_large", f"upload larger than the limit of {limit:,} bytes")
    except ClientDisconnect:  # gone before the body's end: nobody reads the answer, but the log gets one line
        raise ApiError(400, "client_disconnected", "the client hung up before sending the whole body") from None
    return bytes(body)


def parse_upload(body: bytes, content_type: str, limit: int) -> tuple[bytes, str, str]:
    """(file bytes, declared type, file name) from a multipart form's first file field, or from a raw body."""
    if not content_type.lower().startswith("multipart/form-data"):
        return body, content_type, ""
    from python_multipart import create_form_parser

    found: list = []
    try:
        # in memory only: the parser would spill files above MAX_MEMORY_FILE_SIZE to disk, and none is that large
        parser = create_form_parser(
            {"Content-Type": content_type.encode("latin-1", "replace")},
            None,
            found.append,
            config={"MAX_MEMORY_FILE_SIZE": limit + 1},
        )  # inside the try: a multipart type without a boundary fails here
        parser.write(body)
        parser.finalize()
    except Exception as e:
        raise ApiError(400, "bad_request", f"malformed multipart body ({type(e).__name__})") from None
    if not found:
        raise ApiError(400, "bad_request", "no file in the form: send the image as the multipart field 'file'")
    f = found[0]
    f.file_object.seek(0)
    data = f.file_object.read()
    name = (f.file_name or b"").decode("utf-8", "replace")
    return data, f.content_type or "", name


# --- the app ----------------------------------------------------------------------------------------


UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            **{
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in ("image/png", "image/jpeg", "image/webp", "application/dicom")
            },
        },
    }
}


class Service:
    """What the routes do: one model behind a dynamic batcher, the limits, the triage rule."""

    def __init__(self, cfg: ServeConfig, backend: LoadedModel):
        self.cfg, self.backend, self.meta = cfg, backend, backend.meta
        if not backend.task.reads_label_files:  # a classifier: what the service's triage is about
            raise ConfigError(f"covidnet serve takes classification models; this one is for {backend.task.name}")
        self.rule = triage_rule(self.meta, cfg.threshold, cfg.operating_point)
        # On a CPU a batch of cxr3b at 480 px costs more per image than one image alone (the activations of a
        # batch outgrow the caches): 8.0 requests/s unbatched against 4.9 batched on 2 cores, 16 clients
        # (BENCHMARKS.md). On a GPU batching is what fills the device. Hence the device-dependent default.
        self.max_batch = cfg.max_batch or (16 if backend.on_gpu else 1)
        self.batcher = DynamicBatcher(backend.logits, self.max_batch, cfg.batch_wait_ms / 1000)
        self.limit = int(cfg.max_upload_mb * 1024 * 1024)
        self.state = {"in_flight": 0, "requests": 0, "started": time.time()}

    async def authorised(self, request: Request) -> None:
        if self.cfg.token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.cfg.token.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                {"WWW-Authenticate": "Bearer"},
            )

    def health(self) -> dict:
        return {
            "status": "ok",
            "model_id": self.backend.model_id,
            "in_flight": self.state["in_flight"],
            "requests": self.state["requests"],
            "batches": dict(self.batcher.stats),
            "uptime_s": round(time.time() - self.state["started"], 1),
        }

    def model_info(self) -> dict:
        cfg = self.cfg
        return {
            **self.backend.describe(),
            "triage_rule": self.rule,
            "disclaimer": DISCLAIMER,
            "limits": {
                "max_upload_bytes": self.limit,
                "max_pixels": cfg.max_pixels,
                "max_batch": self.max_batch,
                "queue_size": cfg.queue_size,
                "timeout_s": cfg.timeout_s,
            },
            "cam": self.backend.kind == "torch",
            "token_required": cfg.token is not None,
        }

    async def predict(self, request: Request, cam: bool, preview: bool) -> dict:
        if self.state["in_flight"] >= self.cfg.queue_size:
            raise ApiError(
                503,
                "busy",
                f"{self.state['in_flight']} requests in flight (the limit); retry shortly",
                {"Retry-After": "1"},
            )
        self.state["in_flight"] += 1
        self.state["requests"] += 1
        try:
            return await asyncio.wait_for(self._predict(request, cam, preview), self.cfg.timeout_s)
        except TimeoutError:
            raise ApiError(504, "timeout", f"no result within {self.cfg.timeout_s:g} s") from None
        finally:
            self.state["in_flight"] -= 1

    async def _predict(self, request: Request, cam: bool, preview: bool) -> dict:
        t0 = time.perf_counter()
        backend = self.backend
        if cam and backend.kind != "torch":
            raise ApiError(
                400, "cam_unavailable", "heat maps need the PyTorch checkpoint; this service runs an ONNX model"
            )
        body = await read_body(request, self.limit)
        data, declared, filename = parse_upload(body, request.headers.get("content-type", ""), self.limit)
        if not data:
            raise ApiError(400, "empty_file", "the uploaded file is empty (0 bytes)")
        kind = sniff(data, declared, filename)
        if kind is None:
            raise ApiError(415, "unsupported_media_type", "not a PNG, JPEG, WebP or DICOM image (by its content)")
        if self.cfg.keep_uploads:
            ext = {"jpeg": "jpg"}.get(kind, kind)
            await run_in_threadpool(
                (Path(self.cfg.keep_uploads) / f"{request.state.request_id}.{ext}").write_bytes, data
            )
        image = await run_in_threadpool(self.decode, data, kind)
        logits = await self.batcher.submit(image)
        probs = softmax(logits[None], self.meta.get("temperature"))[0]
        out = {
            **decide(probs, self.meta["classes"], self.rule),
            "model_id": backend.model_id,
            "model_version": self.meta.get("version"),
            "covidnet_version": __version__,
            "runtime": backend.kind,
            "request_id": request.state.request_id,
            "disclaimer": DISCLAIMER,
        }
        if cam:
            heat = await self.batcher.call(backend.cam, image, int(np.argmax(probs)))
            out["cam_png"] = await run_in_threadpool(_overlay_png, image, heat)
        if preview:
            out["image_png"] = await run_in_threadpool(_png, image)
        out["elapsed_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return out

    def decode(self, data: bytes, kind: str) -> np.ndarray:
        """An upload -> the model's stored pixels, through the model's contract."""
        from ..imageio import frontal_problem

        name = f"upload.{'dcm' if kind == 'dicom' else kind}"  # never the client's file name
        try:
            problem = frontal_problem(name, data)
            if problem:
                raise ApiError(422, "not_frontal", problem)
            return self.backend.contract.load_bytes(data, name, self.cfg.max_pixels)
        except ImageTooLargeError as e:
            raise ApiError(413, "image_too_large", _safe_message(e, kind)) from None
        except ImageReadError as e:
            raise ApiError(422, "unreadable_image", _safe_message(e, kind)) from None


def _error(status: int, code: str, message: str, request, headers: dict | None = None):
    body = {
        "error": {"status": status, "code": code, "message": message},
        "request_id": getattr(request.state, "request_id", None),
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _install_errors(app: FastAPI) -> None:
    """Every error as ``{"error": {status, code, message}, request_id}``; a request id on every response;
    a log line of method, path, status and time only."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error(e.status, e.code, e.message, request, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(e.status_code, code, str(e.detail), request)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(400, "bad_request", f"{where}: {first.get('msg', 'invalid request')}", request)

    @app.middleware("http")
    async def _request_id(request: Request, call_next):
        request.state.request_id = uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        # method, path and status only: never a file name, a header value or a DICOM field
        log.info(
            "%s %s %s %d %.0f ms",
            request.state.request_id,
            request.method,
            request.url.path,
            response.status_code,
            1000 * (time.perf_counter() - t0),
        )
        return response


def create_app(cfg: ServeConfig, backend: LoadedModel | None = None) -> FastAPI:
    """The FastAPI app for ``cfg`` (for your own ASGI server); ``backend``: an opened model, else opened here."""
    cfg.validate()
    _quiet_dicom_values()
    service = Service(cfg, backend or load_either(cfg.checkpoint, cfg.onnx, device=cfg.device, threads=cfg.threads))

    @asynccontextmanager
    async def lifespan(app):
        await service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(
        title="covidnet",
        version=__version__,
        lifespan=lifespan,
        description=f"COVID-Net chest X-ray triage service. {DISCLAIMER}",
    )
    if cfg.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origin,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    _install_errors(app)
    auth = [Depends(service.authorised)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        page = (files("covidnet.serve") / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(page.replace("{{DISCLAIMER}}", html.escape(DISCLAIMER)))

    @app.get("/healthz", summary="liveness and load")
    async def healthz():
        return service.health()

    @app.get("/v1/model", dependencies=auth, summary="the model and its input contract")
    async def model_info():
        return service.model_info()

    @app.post(
        "/v1/predict",
        dependencies=auth,
        openapi_extra=UPLOAD_SCHEMA,
        summary="classify one chest X-ray (PNG, JPEG, WebP or DICOM)",
    )
    async def predict(request: Request, cam: bool = False, preview: bool = False):
        return await service.predict(request, cam, preview)

    return app


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _overlay_png(image: np.ndarray, heat: np.ndarray) -> str:
    from ..explain import overlay

    return _png(overlay(image, heat))


def _quiet_dicom_values() -> None:
    """pydicom warns about invalid element values by quoting them (a name, a date): not in our logs."""
    import warnings

    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")


def serve(cfg: ServeConfig) -> None:
    """Run the service until interrupted."""
    import socket

    import uvicorn

    cfg.validate()
    try:  # a clear line for a port in use, before loading the model
        with socket.create_server((cfg.host, cfg.port)):
            pass
    except OSError as e:
        raise CovidnetError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e})") from None
    backend = load_either(cfg.checkpoint, cfg.onnx, device=cfg.device, threads=cfg.threads)
    app = create_app(cfg, backend)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.token:
        log.warning("listening on %s without --token: anyone who can reach it can use it", cfg.host)
    log.info(
        "covidnet serve: %s (%s) on http://%s:%d/ . %s", backend.model_id, backend.kind, cfg.host, cfg.port, DISCLAIMER
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", access_log=False, timeout_graceful_shutdown=5)
