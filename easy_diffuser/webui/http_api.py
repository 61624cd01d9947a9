"""HTTP routes of the webui extension, on fastapi alone (A1111's fastapi 0.94 + pydantic 1, Forge's 0.104 + 2).

    POST /easy-diffuser/v1/extract  {"image": base64 or data URL, "model": optional, options...}
                                    {"reselect": token of an earlier answer, options...}: the same image
                                    under other options, without sending it again or running CLIP
    POST /easy-diffuser/v1/refine   {"image", "prompt", "negative_prompt", "model", refine options...}: generate
                                    from the pair with the loaded checkpoint, score it, try better pairs
                                    (rounds 0: a check); the answer is the CLI's --json object
    GET  /easy-diffuser/v1/models
    GET  /easy-diffuser/v1/options  what each option accepts (from the options schema)

The request body is read here, not by pydantic: so that it can be capped (413 past the limit,
before it is all in memory), so that NaN and Infinity are refused as the JSON they are not, and so
that the options are checked by the same schema as on the command line, with the same one-line
messages (422). The extraction itself runs in the threadpool: a request waiting for the webui's
queue lock never blocks the server's event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from secrets import compare_digest
from typing import Any, Callable, ContextManager, List, Optional, TypeVar

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ..calibration.generators import Generator
from ..captioner import CAPTIONERS
from ..engine import Engine, Extraction
from ..errors import ModelError, ModelFileError
from ..images import ImageError, load_image
from ..options import ExtractOptions, OptionError, RefineOptions, schema_help
from ..refine import checked_pair
from ..refine import refine as refine_pair
from ..registry import model_info
from ..scoring import NonFiniteScores
from .service import Service

T = TypeVar("T")
PREFIX = "/easy-diffuser/v1"
DEFAULT_MAX_REQUEST_MB = 50  # a 30 MB photo in base64 is 40 MB
NEEDS_IMAGE = "prompt_style: sentences runs a describing captioner, which needs the image; send image, not reselect"
# A reselect token: a model name and fp16 features (ViT-bigG embedding 3.5 KB, WD v3 tagger 10,861 log-odds 29 KB).
MAX_TOKEN_CHARS = 64 * 1024
# (engine, options) -> the in-process generator, inside a webui job; ValueError when nothing can generate
Generating = Callable[[Engine, RefineOptions], ContextManager[Generator]]


class NoGenerator(ValueError):
    """Nothing to generate with (no checkpoint): the refine route answers 503 with this message."""


class TagOut(BaseModel):
    tag: str
    score: float
    relevance: float
    category: str
    role: str


class ExtractResponse(BaseModel):
    prompt: str
    negative_prompt: str
    tags: List[TagOut]
    model: str
    tau: float
    tau_source: str
    caption: str
    prompt_style: str  # the style in force: tags or sentences (automatic follows the loaded checkpoint)
    prompt_style_note: str  # which style and why; and when the checkpoint ignores the negative prompt
    reselect: str  # send back as {"reselect": ...} with other options to select again from this image
    preset: Optional[str] = None  # a tagger's checkpoint family preset and why (families.py); none for CLIP


class ModelOut(BaseModel):
    name: str
    use: str


class ModelsResponse(BaseModel):
    models: List[ModelOut]
    selected: str  # the setting or --easy-diffuser-model
    resolved: str  # the model that `selected` means now ("Auto" follows the loaded checkpoint)


REQUEST_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "description": "the image file's bytes in base64, or a data: URL"},
                        "reselect": {
                            "type": "string",
                            "description": "instead of image: an earlier answer's reselect token",
                        },
                        "model": {
                            "type": "string",
                            "description": "a name from GET /models; default: the webui's setting",
                        },
                    },
                    "additionalProperties": True,
                    "description": "plus any option of GET /options",
                }
            }
        },
    }
}


def add_routes(
    app: FastAPI,
    service: Service,
    choices: Callable[[], List[str]],
    selected: Callable[[], str],
    api_auth: Optional[str],
    max_request_mb: Callable[[], float] = lambda: DEFAULT_MAX_REQUEST_MB,
    generating: Optional[Generating] = None,
) -> None:
    """Register the routes; `api_auth` is the webui's --api-auth, checked as the webui checks its own.
    With `generating`, also POST /refine."""
    dependencies = [Depends(_basic_auth(api_auth))] if api_auth else []

    async def extract(request: Request) -> Any:
        try:
            body = await _read_json(request, _limit_bytes(max_request_mb()))
            image, token, model, options = _parse(body, choices())
        except HTTPException as error:
            return _refusal(error)
        del body  # the token or image is all that is needed of it

        def work(engine: Engine) -> dict:
            if image is None:
                if engine.style(options).caption:  # sentences, also when automatic means it for this checkpoint
                    raise HTTPException(status_code=422, detail=NEEDS_IMAGE)
                embedding = _embedding_from(token, engine)
                return _answer(engine.extract_embeddings(embedding, options)[0], embedding, engine)
            (result,), embedding = engine.extract_with_embeddings([image], options)
            return _answer(result, embedding, engine)

        def answer() -> Any:  # in a worker thread: a re-selection runs no model, so it needs no queue once loaded
            try:
                if image is None and model is None:  # the token names its model: the loaded one serves it, or none
                    return work(_loaded_for_token(service))
                loaded = service.loaded_engine(model) if image is None else None
                return work(loaded) if loaded else service.run(work, model)
            except HTTPException as error:
                return _refusal(error)
            except ModelFileError as error:  # the model asked for is a broken folder: this model can't serve
                return _refusal(HTTPException(status_code=422, detail=str(error)))
            except ModelError as error:  # the weights can't be had on this server: not the client's fault
                return _refusal(HTTPException(status_code=503, detail=str(error)))
            except OptionError as error:  # booru on a CLIP model
                return _refusal(HTTPException(status_code=422, detail=str(error)))
            except NonFiniteScores as error:
                return _refusal(_non_finite(error))

        return await run_in_threadpool(answer)

    async def refine(request: Request) -> dict:
        assert generating is not None
        body = await _read_json(request, _limit_bytes(max_request_mb()))
        image, prompt, negative, model, options = _parse_refine(body, choices())

        def work(engine: Engine) -> dict:
            with generating(engine, options) as generator:
                result = refine_pair(engine, image, generator, prompt, negative, options)
            return {**result.to_dict(), "stopped": result.stopped, "error": result.error}

        try:
            return await run_in_threadpool(service.run, work, model)
        except ModelFileError as error:  # a broken model folder: 422, as /extract answers it
            raise HTTPException(status_code=422, detail=str(error)) from None
        except (ModelError, NoGenerator) as error:  # no weights, no checkpoint: the server's, not the client's
            raise HTTPException(status_code=503, detail=str(error)) from None
        except NonFiniteScores as error:
            raise _non_finite(error) from None

    def models() -> dict:
        names = choices()
        listed = [{"name": name, "use": info.use if (info := model_info(name)) else ""} for name in names]
        return {"models": listed, "selected": selected(), "resolved": service.resolve(None)}

    def options() -> dict:
        return schema_help()

    app.add_api_route(
        f"{PREFIX}/extract",
        extract,
        methods=["POST"],
        response_model=ExtractResponse,
        dependencies=dependencies,
        openapi_extra=REQUEST_SCHEMA,
    )
    if generating is not None:
        app.add_api_route(f"{PREFIX}/refine", refine, methods=["POST"], dependencies=dependencies)
    app.add_api_route(
        f"{PREFIX}/models", models, methods=["GET"], response_model=ModelsResponse, dependencies=dependencies
    )
    app.add_api_route(f"{PREFIX}/options", options, methods=["GET"], dependencies=dependencies)


def _refusal(error: HTTPException) -> JSONResponse:
    """The answer fastapi gives for `error`, returned instead of raised. A raised exception's traceback keeps
    the frames that hold the request body alive: 16 refused 49 MB bodies took the server from 1.1 to 3.0 GB,
    held in reference cycles until the garbage collector ran and by the idle worker thread that ran the request
    until it ran another. Returned, the exception and its frames are freed when the request ends."""
    return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)


def _non_finite(error: NonFiniteScores) -> HTTPException:
    """422, as for a model folder that is broken (ModelFileError): the request is sound, this model's weights are
    not (or overflowed for this image), and asking again will not help, as a 503 would suggest."""
    return HTTPException(status_code=422, detail=f"image: {error}")


def _limit_bytes(megabytes: Any) -> int:
    """The setting in bytes; a value the settings page can't produce (a hand-edited config.json's NaN, text or
    0) means the default, not a 500 on every request or a limit that refuses them all."""
    valid = isinstance(megabytes, (int, float)) and not isinstance(megabytes, bool) and math.isfinite(megabytes)
    return int((megabytes if valid and megabytes >= 1 else DEFAULT_MAX_REQUEST_MB) * 1024 * 1024)


async def _read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object; 413 as soon as it passes `limit` bytes, 400/422 for what isn't a JSON object."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    received = bytearray()  # one copy of the body, not a list of chunks and then their join
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:  # a client may lie about or leave out Content-Length
            raise _too_large(limit)
    try:
        body = json.loads(received, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise HTTPException(status_code=400, detail=f"body: not valid JSON ({_first_line(error)})") from None
    if not isinstance(body, dict):
        raise HTTPException(status_code=422, detail='body: must be a JSON object such as {"image": "..."}')
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send finite numbers only")


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status_code=413,
        detail=(
            f"body: larger than {limit / 1024 / 1024:g} MB; send a smaller image, or raise the limit in "
            "Settings > Easy Diffuser > Largest HTTP request"
        ),
    )


def _first_line(error: Exception) -> str:
    return str(error).strip().split("\n")[0][:200]


def _parse(body: dict, choices: List[str]) -> tuple[Any, Optional[str], Optional[str], ExtractOptions]:
    """(image, reselect token, model, options) from the request, each checked; exactly one of image and token.
    400 for a bad image or model, 422 for options."""
    fields = dict(body)
    image_text, token, model = fields.pop("image", None), fields.pop("reselect", None), fields.pop("model", None)
    if token is not None:
        if image_text is not None or not isinstance(token, str):
            raise HTTPException(
                status_code=422, detail="reselect: a token string from an earlier answer, sent instead of image"
            )
    elif not isinstance(image_text, str):
        raise HTTPException(status_code=422, detail="image: required, the image file's bytes in base64 or a data: URL")
    _check_model(model, choices)
    options = _options(ExtractOptions.from_mapping, fields)
    if options.caption and options.caption.model not in CAPTIONERS:
        # Any other id would make the server download whatever a client names.
        listed = ", ".join(CAPTIONERS)
        raise HTTPException(
            status_code=400, detail=f"caption: {options.caption.model[:100]!r} is not one of true, false, {listed}"
        )
    if token is not None and options.caption:
        raise HTTPException(
            status_code=422, detail="caption: a caption needs the image; send image instead of reselect"
        )
    return (_decode_image(image_text) if token is None else None), token, model, options


def _parse_refine(body: dict, choices: List[str]) -> tuple[Any, str, str, Optional[str], RefineOptions]:
    """(image, prompt, negative prompt, model, options) of a refine request, each checked (400 or 422)."""
    fields = dict(body)
    image_text, model = fields.pop("image", None), fields.pop("model", None)
    prompt, negative = fields.pop("prompt", None), fields.pop("negative_prompt", "")
    if not isinstance(image_text, str):
        raise HTTPException(status_code=422, detail="image: required, the image file's bytes in base64 or a data: URL")
    if not isinstance(prompt, str) or not isinstance(negative, str):
        raise HTTPException(
            status_code=422, detail="prompt, negative_prompt: the pair to check, as text (prompt is required)"
        )
    _check_model(model, choices)
    options = _options(RefineOptions.from_mapping, fields)
    try:
        prompt, negative = checked_pair(prompt, negative)  # a 4 MB prompt would hold the generation queue
    except OptionError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    return _decode_image(image_text), prompt, negative, model, options


def _check_model(model: Any, choices: List[str]) -> None:
    if model is not None and model not in choices:
        raise HTTPException(status_code=400, detail=f"model: {str(model)[:100]!r} is not one of {', '.join(choices)}")


def _options(parse: Callable[[dict], T], fields: dict) -> T:
    """The request's options by the schema; 422 with its one-line message."""
    try:
        return parse(fields)
    except OptionError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None


def _answer(result: Extraction, embedding: torch.Tensor, engine: Engine) -> dict:
    """The extraction, and the token that selects again from the same image's features (CLIP's image
    embedding, a tagger's tag probabilities as log-odds; fp16)."""
    payload = result.model.encode() + b"\0" + engine.scorer.for_token(embedding[0]).numpy().tobytes()
    return {**result.to_dict(), "reselect": base64.urlsafe_b64encode(payload).decode()}


def _loaded_for_token(service: Service) -> Engine:
    """A re-selection that names no model never loads one: a token is another model's (409 from
    `_embedding_from`) or the loaded model's, and a model the settings name is not the token's concern."""
    engine = service.engine
    if engine is None:
        raise HTTPException(status_code=409, detail="reselect: the token's model is not loaded; send the image again")
    return engine


def _embedding_from(token: str, engine: Engine) -> torch.Tensor:
    """The image's features in a reselect token, checked against this engine; 400/409 with the reason."""
    if len(token) > MAX_TOKEN_CHARS:  # refused before it is decoded: a 49 MB one would be copied three times
        raise HTTPException(status_code=400, detail="reselect: not a token this server gave")
    try:
        model, _, data = base64.urlsafe_b64decode(token.encode()).partition(b"\0")
        embedding = torch.frombuffer(bytearray(data), dtype=torch.float16).float()
    except (binascii.Error, ValueError, RuntimeError):
        raise HTTPException(status_code=400, detail="reselect: not a token this server gave") from None
    if model.decode(errors="replace") != engine.model_id:
        raise HTTPException(
            status_code=409,
            detail=(
                f"reselect: the token was made by {model.decode(errors='replace')[:100]!r}, this request uses "
                f"{engine.model_id!r}; send the image again"
            ),
        )
    features = engine.scorer.checked(embedding)
    if features is None:
        raise HTTPException(status_code=400, detail="reselect: not a token this server gave")
    return features


def _basic_auth(api_auth: str) -> Callable[[HTTPBasicCredentials], bool]:
    """The check of modules/api/api.py (Api.auth): "user:password" pairs, comma-separated."""
    credentials = dict(pair.split(":", 1) for pair in api_auth.split(","))

    def check(given: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:
        if given.username in credentials and compare_digest(given.password, credentials[given.username]):
            return True
        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )

    return check


def _decode_image(text: str):
    """base64 (line breaks allowed) or a data: URL -> an RGB image; 400 with a one-line reason otherwise."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise HTTPException(
                status_code=400, detail="image: a data: URL must be base64-encoded (data:image/png;base64,...)"
            )
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(status_code=400, detail="image: not valid base64") from None
    try:
        return load_image(data, "image")
    except ImageError as error:
        raise HTTPException(status_code=400, detail=str(error)) from None
