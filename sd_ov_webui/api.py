"""`/sd-ov/v1/...`: Optimize, the recipe list and the GenAI export over HTTP, shaped like the webui's own API
(`modules/api`): pydantic request and response models, HTTP error codes.

- 422: a field is unknown, of the wrong type, or out of range (checked before any work);
- 409: another job holds the webui's queue, or the user interrupted Optimize (nothing was added);
- 500: Optimize failed; the message says why; the webui keeps running.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, Field, create_model

from sd_ov import (
    Cancelled,
    DeviceNotFoundError,
    SdOvError,
    UnsupportedModelError,
    deepcache_pairs,
    optimize_fields,
    recipe_entries,
)

from .genai_export import export_recipe, loaded_checkpoint_entry
from .optimize_job import Busy, optimize_loaded_checkpoint, option_label, parse_request
from .progress import cancellable_progress
from .settings import cache_root

log = logging.getLogger("sd_ov")


class ForbidExtra(BaseModel):
    """A request model that answers 422 to a field it does not have."""

    class Config:
        extra = "forbid"


def optimize_body_model() -> type[BaseModel]:
    """The Optimize request: one attribute per row of the engine's field table (`optimize_fields`),
    its default and help; the form's parser checks the values (422 before any work). A field that
    takes a name or a number ("off" or a DeepCache branch) takes either."""
    attributes: dict[str, Any] = {}
    for row in optimize_fields().values():
        kind: Any = row.kind
        if kind is str and any(choice.isdigit() for choice in row.options()):
            kind = str | int
        if row.nullable:
            kind = kind | None
        attributes[row.name] = (kind, Field(row.default, description=row.help))
    return create_model("OptimizeBody", __base__=ForbidExtra, **attributes)


OptimizeBody = optimize_body_model()


class RecipeItem(BaseModel):
    checkpoint: str
    label: str
    option: str | None = None
    entry: str
    report: dict[str, Any] = {}
    deepcache_branches: list[int] = []  # the DeepCache pairs made of this recipe


class OptimizeResponse(BaseModel):
    label: str
    entry: str
    report: dict[str, Any]
    vae_decoder: dict[str, Any] = {}  # the INT8 VAE decoder's report (or a note why none)
    deepcache_branch: int | None = None  # the DeepCache pair made with it, if any
    deepcache_note: str = ""  # why a DeepCache pair asked for was not made
    current: bool = False  # the new recipe is now the current SD Unet (Settings → OpenVINO says whether)
    previous_unet: str | None = None  # the SD Unet setting it replaced


class ExportGenAIBody(ForbidExtra):
    recipe: str | None = Field(
        None, description="a recipe label of the loaded checkpoint, e.g. 'INT8 ToMe0.5'; none: FP32"
    )
    clip_skip: int | None = Field(
        None, ge=1, le=12, description="the text encoder's layer (default: the webui's)"
    )
    folder: str | None = Field(
        None, description="where to write (default: models/OpenVINO-GenAI/<checkpoint>-<recipe>)"
    )
    loras: str | None = Field(
        None, description="LoRAs to bake in, as in a prompt: '<lora:name:0.8> <lora:other:1:0.5>'"
    )
    sampler: str | None = Field(
        None,
        description="the webui sampler GenAI's scheduler reproduces: Euler (default), Euler a, DDIM, LCM",
    )


class ExportGenAIResponse(BaseModel):
    folder: str
    recipe: str
    disk_bytes: int
    notes: list[str] = []  # e.g. a sampler GenAI has no scheduler for


class RecipesResponse(BaseModel):
    recipes: list[RecipeItem]


def _fields(body: BaseModel) -> dict[str, Any]:
    return body.model_dump() if hasattr(body, "model_dump") else body.dict()


def optimize_route(body: OptimizeBody) -> OptimizeResponse:
    try:
        request = parse_request(_fields(body))
    except (ValueError, DeviceNotFoundError) as err:
        raise HTTPException(status_code=422, detail=str(err)) from err
    try:
        made = optimize_loaded_checkpoint(request, cancellable_progress, wait=False)
    except UnsupportedModelError as err:  # a recipe the loaded model can't take, before any work
        raise HTTPException(status_code=422, detail=str(err)) from err
    except Busy as err:
        raise HTTPException(status_code=409, detail=str(err)) from err
    except Cancelled as err:
        raise HTTPException(
            status_code=409, detail=f"Optimize was interrupted ({err}): nothing was added"
        ) from err
    except Exception as err:  # reported to the caller; the webui keeps running
        log.exception("sd-ov: Optimize (API) failed")
        raise HTTPException(status_code=500, detail=f"Optimize failed: {type(err).__name__}: {err}") from err
    entry = made.entry
    report = entry.manifest.report.to_json() if entry.manifest.report else {}
    return OptimizeResponse(
        label=made.label or option_label(request),
        entry=str(entry.path),
        report=report,
        vae_decoder=made.vae_report(),
        deepcache_branch=made.pair.manifest.recipe.deepcache_branch if made.pair is not None else None,
        deepcache_note=made.pair_note,
        current=made.previous_unet is not None,
        previous_unet=made.previous_unet,
    )


def recipes_route() -> RecipesResponse:
    try:
        entries = recipe_entries(cache_root())
    except OSError as err:
        raise HTTPException(status_code=500, detail=f"cannot read the cache folder: {err}") from err
    return RecipesResponse(
        recipes=[
            RecipeItem(
                checkpoint=e.manifest.checkpoint_name,
                label=e.manifest.recipe.label(),
                option=None
                if e.manifest.recipe.is_plain
                else f"[OpenVINO {e.manifest.recipe.label()}] {e.manifest.checkpoint_name}",
                entry=str(e.path),
                report=e.manifest.report.to_json() if e.manifest.report else {},
                deepcache_branches=sorted(
                    p.manifest.recipe.deepcache_branch for p in deepcache_pairs(cache_root(), e)
                ),
            )
            for e in entries
        ]
    )


def export_genai_route(body: ExportGenAIBody) -> ExportGenAIResponse:
    try:
        entry = loaded_checkpoint_entry(body.recipe)
        folder, size, notes = export_recipe(
            entry, body.clip_skip, body.folder, loras=body.loras, sampler=body.sampler
        )
    except (UnsupportedModelError, SdOvError) as err:
        if isinstance(err, Cancelled):
            raise HTTPException(
                status_code=409, detail=f"the export was interrupted ({err}): nothing was written"
            ) from err
        raise HTTPException(status_code=422, detail=str(err)) from err
    except Exception as err:
        log.exception("sd-ov: the GenAI export failed")
        raise HTTPException(
            status_code=500, detail=f"the GenAI export failed: {type(err).__name__}: {err}"
        ) from err
    return ExportGenAIResponse(
        folder=str(folder), recipe=entry.manifest.recipe.label(), disk_bytes=size, notes=notes
    )


def on_app_started(_demo, app) -> None:
    app.add_api_route("/sd-ov/v1/optimize", optimize_route, methods=["POST"], response_model=OptimizeResponse)
    app.add_api_route("/sd-ov/v1/recipes", recipes_route, methods=["GET"], response_model=RecipesResponse)
    app.add_api_route(
        "/sd-ov/v1/export-genai", export_genai_route, methods=["POST"], response_model=ExportGenAIResponse
    )
