"""Request validation: one pydantic model per action, errors that name the field and the rule.

Fields are strict (no "720" for 720, no 1 for true) and unknown fields are refused: a misspelt option that were
silently ignored would change the result without telling the client.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ErrorCode, WorkerError

ACTIONS = ("health", "initialize", "restore")
MEDIA_FIELDS = ("media", "video", "image")
MODEL_TYPES = ("seedvr2_3b", "seedvr2_7b")
VIDEO_FORMATS = ("mp4", "webm", "mov")
IMAGE_FORMATS = ("png", "jpg", "webp")
FORMATS_BY_KIND = {"video": VIDEO_FORMATS, "image": IMAGE_FORMATS}

ModelType = Literal["seedvr2_3b", "seedvr2_7b"]
ModelVariant = Literal["normal", "sharp"]


def _int(lo: int, hi: int, default: int | None = None, **extra: Any) -> Any:
    return Field(default, ge=lo, le=hi, description=f"an integer between {lo} and {hi}", **extra)


def _number(lo: float, hi: float, default: float | None = None) -> Any:
    return Field(default, ge=lo, le=hi, description=f"a number between {lo:g} and {hi:g}")


def _choice(options: tuple[str, ...], default: str | None = None) -> Any:
    return Field(default, description="one of " + ", ".join(options))


def _check_4n_plus_1(value: int | None) -> int | None:
    if value is not None and value % 4 != 1:
        raise ValueError("not of the form 4n+1")
    return value


def _check_http_url(value: str | None) -> str | None:
    if value is not None:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("not an http(s) URL")
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    action: Literal["health", "initialize", "restore"] | None = None


class ModelSelection(_Request):
    """The model fields shared by `initialize` and `restore`; None means "the resident model or the default"."""

    model_type: Annotated[ModelType | None, _choice(MODEL_TYPES)] = None
    model_variant: Annotated[ModelVariant | None, _choice(("normal", "sharp"))] = None
    sp_size: Annotated[int | None, _int(1, 64)] = None

    @model_validator(mode="after")
    def _sharp_is_7b_only(self) -> "ModelSelection":
        if self.model_variant == "sharp" and self.model_type == "seedvr2_3b":
            raise ValueError("model_variant sharp exists for seedvr2_7b only")
        return self


class HealthRequest(BaseModel):
    """Health never fails on its input: monitoring probes may send anything next to the action."""

    model_config = ConfigDict(extra="ignore")


class InitializeRequest(ModelSelection):
    pass


class RestoreRequest(ModelSelection):
    media: Annotated[str | None, Field(None, description="a base64 string")]
    video: Annotated[str | None, Field(None, description="a base64 string")]
    image: Annotated[str | None, Field(None, description="a base64 string")]
    media_url: Annotated[str | None, Field(None, description="an http or https URL"), AfterValidator(_check_http_url)]
    media_type: Annotated[Literal["auto", "video", "image"], _choice(("auto", "video", "image"), "auto")]
    res_h: Annotated[int, _int(64, 4096, 1280)]
    res_w: Annotated[int, _int(64, 4096, 720)]
    scale: Annotated[float | None, _number(0.25, 16)]
    seed: Annotated[int, _int(0, 2**32 - 1, 666)]
    cfg_scale: Annotated[float, _number(0, 20, 1.0)]
    cfg_rescale: Annotated[float, _number(0, 1, 0.0)]
    sample_steps: Annotated[int, _int(1, 50, 1)]
    color_fix: Annotated[Literal["wavelet", "adain", "none"], _choice(("wavelet", "adain", "none"), "wavelet")]
    batch_frames: Annotated[
        int | None,
        Field(None, ge=1, le=1001, description="an integer of the form 4n+1 between 1 and 1001"),
        AfterValidator(_check_4n_plus_1),
    ]
    overlap_frames: Annotated[int | None, _int(0, 1000)]
    fps: Annotated[float | None, _number(0.1, 240)]
    keep_audio: Annotated[bool, Field(True, description="true or false")]
    output_format: Annotated[
        Literal["mp4", "webm", "mov", "png", "jpg", "webp"] | None, _choice(VIDEO_FORMATS + IMAGE_FORMATS)
    ]
    crf: Annotated[int, _int(0, 51, 18)]
    output_mode: Annotated[Literal["auto", "inline", "upload"], _choice(("auto", "inline", "upload"), "auto")]

    @model_validator(mode="after")
    def _consistent(self) -> "RestoreRequest":
        given = [name for name in (*MEDIA_FIELDS, "media_url") if getattr(self, name) is not None]
        if not given:
            raise ValueError("No video data provided: give media, video, image or media_url")
        if len(given) > 1:
            raise ValueError(f"give only one of media, video, image, media_url (got {', '.join(given)})")
        if self.scale is not None and {"res_h", "res_w"} & self.model_fields_set:
            raise ValueError("give either scale or res_h/res_w, not both")
        if (
            self.overlap_frames is not None
            and self.batch_frames is not None
            and self.overlap_frames >= self.batch_frames
        ):
            raise ValueError("overlap_frames must be smaller than batch_frames")
        fits = FORMATS_BY_KIND.get(self.media_type)
        if self.output_format is not None and fits is not None and self.output_format not in fits:
            # known before any transfer when the client names the kind; with "auto" the probe decides
            raise ValueError(
                f"output_format {self.output_format} does not fit media_type {self.media_type}: "
                f"use one of {', '.join(fits)}"
            )
        return self

    @property
    def media_field(self) -> str:
        """The name under which the client sent its media, so messages speak the client's words."""
        return next(name for name in (*MEDIA_FIELDS, "media_url") if getattr(self, name) is not None)


REQUESTS: dict[str, type[BaseModel]] = {
    "health": HealthRequest,
    "initialize": InitializeRequest,
    "restore": RestoreRequest,
}


def resolve_action(payload: Any) -> str:
    if not isinstance(payload, dict):
        raise WorkerError(ErrorCode.INVALID_INPUT, "input must be a JSON object")
    action = payload.get("action")
    if action is None:
        if any(payload.get(name) is not None for name in (*MEDIA_FIELDS, "media_url")):
            return "restore"
        raise WorkerError(
            ErrorCode.INVALID_INPUT,
            "No video data provided: give media, video, image or media_url, or an action (one of "
            + ", ".join(ACTIONS)
            + ")",
        )
    if action not in ACTIONS:
        raise WorkerError(ErrorCode.INVALID_INPUT, f"action must be one of {', '.join(ACTIONS)} (got {action!r})")
    return action


def parse_request(payload: Any) -> BaseModel:
    """Validate a job's input; the error names every offending field with its rule, in one string."""
    model = REQUESTS[resolve_action(payload)]
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        raise WorkerError(ErrorCode.INVALID_INPUT, _describe(err, model)) from None


def _describe(err: ValidationError, model: type[BaseModel]) -> str:
    messages = []
    for item in err.errors():
        field = str(item["loc"][0]) if item["loc"] else None
        if item["type"] == "extra_forbidden":
            valid = ", ".join(model.model_fields)
            messages.append(f"unknown field {field!r} (valid fields: {valid})")
        elif field is None:
            messages.append(str(item["msg"]).removeprefix("Value error, "))
        else:
            rule = model.model_fields[field].description
            messages.append(f"{field} must be {rule}" if rule else f"{field}: {item['msg']}")
    return "; ".join(dict.fromkeys(messages))
