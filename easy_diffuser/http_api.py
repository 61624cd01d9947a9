"""HTTP routes of the webui extension, on fastapi and pydantic alone (pydantic 1 for A1111, 2 for Forge).

    POST /easy-diffuser/v1/extract  {"image": base64 or data URL, "model": optional, options...}
    GET  /easy-diffuser/v1/models

Handlers are plain `def`: FastAPI runs them in its threadpool, so a request waiting for the
webui's queue lock never blocks the server's event loop.
"""
from __future__ import annotations

import base64
import binascii
from secrets import compare_digest
from typing import Callable, List, Optional, Union

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field, StrictBool, StrictStr, confloat, conint

from .captioner import CAPTIONERS, CaptionOptions
from .engine import ExtractOptions
from .images import ImageError, load_image
from .models import REGISTRY, ModelError
from .session import captioner_spec
from .ui_helpers import Service

PREFIX = "/easy-diffuser/v1"
DEFAULTS = ExtractOptions()


class ExtractRequest(BaseModel):
    image: StrictStr = Field(..., description="the image file's bytes in base64, or a data: URL")
    model: Optional[StrictStr] = Field(None, description="a name from GET /models; default: the webui's setting")
    # conint/confloat: constraints that pydantic 1 and 2 both enforce; strict, so "3" or true is no count.
    max_tags: conint(strict=True, ge=1, le=75) = DEFAULTS.max_tags
    max_per_category: conint(strict=True, ge=1, le=75) = DEFAULTS.max_per_category
    tau: Optional[confloat(ge=-10, le=10)] = Field(None, description="relevance threshold; default: calibrated or the model's")
    negatives: conint(strict=True, ge=0, le=75) = DEFAULTS.negatives
    quality_negatives: conint(strict=True, ge=0, le=75) = DEFAULTS.quality_negatives
    weights: StrictBool = False
    caption: Union[StrictBool, StrictStr] = Field(False, description="caption first: true (BLIP base), a captioner id, or false")
    caption_beams: conint(strict=True, ge=1, le=16) = CaptionOptions.beams
    caption_min_length: conint(strict=True, ge=0, le=75) = CaptionOptions.min_length
    caption_max_length: conint(strict=True, ge=1, le=75) = CaptionOptions.max_length


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


class ModelOut(BaseModel):
    name: str
    use: str


class ModelsResponse(BaseModel):
    models: List[ModelOut]
    selected: str  # the setting or --easy-diffuser-model
    resolved: str  # the model that `selected` means now ("Auto" follows the loaded checkpoint)


def add_routes(
    app: FastAPI,
    service: Service,
    choices: Callable[[], List[str]],
    selected: Callable[[], str],
    api_auth: Optional[str],
) -> None:
    """Register the routes; `api_auth` is the webui's --api-auth, checked as the webui checks its own."""
    dependencies = [Depends(_basic_auth(api_auth))] if api_auth else []

    def extract(request: ExtractRequest) -> dict:
        image = _decode_image(request.image)
        if request.model is not None and request.model not in choices():
            raise HTTPException(status_code=400, detail=f"model {request.model!r} is not one of {', '.join(choices())}")
        if request.caption not in (True, False) and request.caption not in CAPTIONERS:
            # Any other id would make the server download whatever a client names.
            raise HTTPException(status_code=400, detail=f"caption {request.caption!r} is not one of true, false, {', '.join(CAPTIONERS)}")
        options = ExtractOptions(
            max_tags=request.max_tags,
            max_per_category=request.max_per_category,
            tau=request.tau,
            negatives=request.negatives,
            quality_negatives=request.quality_negatives,
            weights=request.weights,
            caption=captioner_spec(request.caption),
            caption_beams=request.caption_beams,
            caption_min_length=request.caption_min_length,
            caption_max_length=request.caption_max_length,
        )
        try:
            return service.run(lambda engine: engine.extract(image, options), model=request.model).to_dict()
        except ModelError as error:  # the weights can't be had on this server: not the client's fault
            raise HTTPException(status_code=503, detail=str(error)) from None

    def models() -> dict:
        names = choices()
        listed = [{"name": name, "use": REGISTRY[name].use if name in REGISTRY else ""} for name in names]
        return {"models": listed, "selected": selected(), "resolved": service.resolve(None)}

    app.add_api_route(f"{PREFIX}/extract", extract, methods=["POST"], response_model=ExtractResponse, dependencies=dependencies)
    app.add_api_route(f"{PREFIX}/models", models, methods=["GET"], response_model=ModelsResponse, dependencies=dependencies)


def _basic_auth(api_auth: str) -> Callable[[HTTPBasicCredentials], bool]:
    """The check of modules/api/api.py (Api.auth): "user:password" pairs, comma-separated."""
    credentials = dict(pair.split(":", 1) for pair in api_auth.split(","))

    def check(given: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:
        if given.username in credentials and compare_digest(given.password, credentials[given.username]):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return check


def _decode_image(text: str):
    """base64 (line breaks allowed) or a data: URL -> an RGB image; 400 with a one-line reason otherwise."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise HTTPException(status_code=400, detail="image: a data: URL must be base64-encoded (data:image/png;base64,...)")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(status_code=400, detail="image: not valid base64") from None
    try:
        return load_image(data, "image")
    except ImageError as error:
        raise HTTPException(status_code=400, detail=str(error)) from None
