"""DICOMweb under ``/dicom-web``: the route table, and the rendered/thumbnail resources.

QIDO-RS lives in ``viewer.qido``, WADO-RS retrieve, metadata, frames and bulk
data in ``viewer.wado``, STOW-RS in ``viewer.stow``; their routes are added
here, so every DICOMweb URL is listed in one place.

Rendered images go through ``viewer.render``; a single image carries an ETag
built from the stored file's hash and the parameters, so a browser revalidating
a slice it already has costs no decoding at all.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, request, stream_with_context
from sqlalchemy.orm import Session
from werkzeug.exceptions import BadRequest, NotFound

from viewer import qido, rendered_params, stow, wado
from viewer.access import (
    InstanceRef,
    find_instance_ref,
    find_series,
    find_study,
    require_principal,
)
from viewer.db import Instance, Series, Study
from viewer.dicomjson import services as _services
from viewer.frames import FrameLoader
from viewer.parallel import BandImage
from viewer.render import RenderError, burn_in, display_image, encode
from viewer.series import representative, series_stacks, study_series
from viewer.wado import parse_frames as _parse_frames

log = logging.getLogger(__name__)
bp = Blueprint("dicomweb", __name__, url_prefix="/dicom-web")

UID = "<string(maxlength=64):{}>"
STUDY = "/studies/" + UID.format("study_uid")
SERIES = STUDY + "/series/" + UID.format("series_uid")
INSTANCE = SERIES + "/instances/" + UID.format("sop_uid")


def _add(rule: str, view: Callable[..., Response], methods: tuple[str, ...] = ("GET",)) -> None:
    bp.add_url_rule(rule, view.__name__, view, methods=list(methods))


# QIDO-RS
_add("/studies", qido.search_studies)
_add("/series", qido.search_all_series)
_add("/instances", qido.search_all_instances)
_add(STUDY + "/series", qido.search_series)
_add(STUDY + "/instances", qido.search_study_instances)
_add(SERIES + "/instances", qido.search_series_instances)
# WADO-RS
_add(STUDY, wado.retrieve_study)
_add(SERIES, wado.retrieve_series)
_add(INSTANCE, wado.retrieve_instance)
_add(STUDY + "/metadata", wado.study_metadata)
_add(SERIES + "/metadata", wado.series_metadata)
_add(INSTANCE + "/metadata", wado.instance_metadata)
_add(INSTANCE + "/frames/<frames>", wado.retrieve_frames)
_add(INSTANCE + "/bulkdata/<path:tag_path>", wado.bulkdata)
# STOW-RS
_add("/studies", stow.store, ("POST",))
bp.add_url_rule(STUDY, "store_study", stow.store, methods=["POST"])


# --- Rendered and thumbnail resources -------------------------------------------------------


def render_image(frames: FrameLoader, file_hash: str, number: int,
                 params: rendered_params.RenderParams, labels: dict[str, list[str]]) -> bytes:
    """One frame, rendered and encoded as ``params`` ask (``labels``: burnt-in text)."""
    frame = frames.load(file_hash, number)
    image = display_image(frame, params.window, params.viewport)
    if params.annotations:
        top = labels["patient"] if "patient" in params.annotations else []
        bottom = labels["technique"] if "technique" in params.annotations else []
        image = burn_in(BandImage.of(image).whole(), top, bottom)
    return encode(image, params.media_type, params.quality)


def _image(file_hash: str, number: int, params: rendered_params.RenderParams,
           labels: dict[str, list[str]]) -> bytes:
    return render_image(_services().frames, file_hash, number, params, labels)


def etag_for(file_hash: str, number: int, params: rendered_params.RenderParams,
             labels: dict[str, list[str]]) -> str:
    """A rendered image's ETag: the stored file, the frame and everything that changes
    the output."""
    tag = hashlib.sha256(f"{file_hash}|{number}|{params.cache_key()}|{labels}".encode())
    return tag.hexdigest()[:32]


def _labels(instance: Instance | None, series: Series, study: Study,
            params: rendered_params.RenderParams) -> dict[str, list[str]]:
    if not params.annotations:
        return {}
    window = params.window
    technique = [f"{series.modality} {series.description}".strip()]
    if window:
        technique.append(f"C {window.center:g}  W {window.width:g}")
    if instance is not None and instance.instance_number is not None:
        technique.append(f"Image {instance.instance_number}")
    patient = study.patient
    return {"patient": [patient.name.replace("^", " "), patient.patient_id], "technique": technique}


def _single(file_hash: str, number: int, params: rendered_params.RenderParams,
            labels: dict[str, list[str]]) -> Response:
    etag = etag_for(file_hash, number, params, labels)
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    else:
        response = Response(_image(file_hash, number, params, labels), mimetype=params.media_type)
    response.set_etag(etag)
    response.headers["Cache-Control"] = "private, max-age=86400"
    for warning in params.warnings:
        response.headers.add("Warning", f'299 viewer "{warning}"')
    return response


# The most pixels a viewport may ask for in one multi-frame answer (a study's, a series'):
# e.g. 1,000 frames at 512x512. A few 4096x4096 answers for a whole series (2 gigapixels
# each, a minute of encoding) would otherwise keep every thread busy.
MAX_ANSWER_PIXELS = 1 << 28


def _multipart(items: list[tuple[str, int]], params: rendered_params.RenderParams,
               labels: dict[str, list[str]]) -> Response:
    """Many frames as multipart/related, rendered one by one while streaming."""
    boundary = uuid.uuid4().hex
    if not items:
        raise NotFound("there are no images here")
    viewport = params.viewport
    if viewport is not None and len(items) * viewport.width * viewport.height > MAX_ANSWER_PIXELS:
        raise BadRequest(
            f"viewport: {len(items)} frames of up to {viewport.width}x{viewport.height} "
            f"pixels are more than {MAX_ANSWER_PIXELS // 1_000_000} megapixels in one answer; "
            "ask for a smaller viewport or fewer frames")
    # The first part is rendered before the answer starts, so a frame that
    # cannot be decoded is still a 422, not an empty 200.
    first = _image(items[0][0], items[0][1], params, labels)

    def parts() -> Iterator[bytes]:
        for position, (file_hash, number) in enumerate(items):
            try:
                body = first if position == 0 else _image(file_hash, number, params, labels)
            except RenderError as exc:
                log.warning("frame %s/%d left out of a multipart answer: %s", file_hash,
                            number, exc)
                continue
            yield (f"--{boundary}\r\nContent-Type: {params.media_type}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode()
            yield body
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    response = Response(stream_with_context(parts()), mimetype="multipart/related")
    response.headers["Content-Type"] = (
        f'multipart/related; type="{params.media_type}"; boundary={boundary}'
    )
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def _params(thumbnail: bool = False) -> rendered_params.RenderParams:
    return rendered_params.parse_request(request.query_string, request.headers.get("Accept"),
                                         thumbnail)


def _series_items(db: Session, series: Series) -> list[tuple[str, int]]:
    return [(s.file_hash, s.frame) for stack in series_stacks(db, series) for s in stack.slices]


@bp.get(STUDY + "/rendered")
def study_rendered(study_uid: str) -> Response:
    params = _params()
    db = _services().db()
    study = find_study(db, require_principal(), study_uid)
    series_list = study_series(db, study.id)
    items = [item for s in series_list for item in _series_items(db, s)]
    labels = _labels(None, series_list[0], study, params) if series_list else {}
    return _multipart(items, params, labels)


@bp.get(SERIES + "/rendered")
def series_rendered(study_uid: str, series_uid: str) -> Response:
    params = _params()
    db = _services().db()
    series = find_series(db, require_principal(), study_uid, series_uid)
    return _multipart(_series_items(db, series), params, _labels(None, series, series.study,
                                                                 params))


def _instance_labels(ref: InstanceRef,
                     params: rendered_params.RenderParams) -> dict[str, list[str]]:
    """Annotation text; the ORM rows are loaded only when annotations are asked for."""
    if not params.annotations:
        return {}
    instance = _services().db().get(Instance, ref.instance_pk)
    assert instance is not None
    return _labels(instance, instance.series, instance.series.study, params)


@bp.get(INSTANCE + "/rendered")
def instance_rendered(study_uid: str, series_uid: str, sop_uid: str) -> Response:
    params = _params()
    ref = find_instance_ref(require_principal(), study_uid, series_uid, sop_uid)
    labels = _instance_labels(ref, params)
    if ref.number_of_frames > 1:
        items = [(ref.file_hash, n) for n in range(1, ref.number_of_frames + 1)]
        return _multipart(items, params, labels)
    return _single(ref.file_hash, 1, params, labels)


@bp.get(INSTANCE + "/frames/<frames>/rendered")
def frame_rendered(study_uid: str, series_uid: str, sop_uid: str, frames: str) -> Response:
    params = _params()
    ref = find_instance_ref(require_principal(), study_uid, series_uid, sop_uid)
    numbers = _parse_frames(frames, ref.number_of_frames)
    labels = _instance_labels(ref, params)
    if len(numbers) == 1:
        return _single(ref.file_hash, numbers[0], params, labels)
    return _multipart([(ref.file_hash, n) for n in numbers], params, labels)


@bp.get(STUDY + "/thumbnail")
def study_thumbnail(study_uid: str) -> Response:
    params = _params(thumbnail=True)
    db = _services().db()
    study = find_study(db, require_principal(), study_uid)
    for series in study_series(db, study.id):
        chosen = representative(series_stacks(db, series))
        if chosen is not None:
            return _single(chosen.file_hash, chosen.frame, params, {})
    raise NotFound("the study has no images")


@bp.get(SERIES + "/thumbnail")
def series_thumbnail(study_uid: str, series_uid: str) -> Response:
    params = _params(thumbnail=True)
    db = _services().db()
    series = find_series(db, require_principal(), study_uid, series_uid)
    chosen = representative(series_stacks(db, series))
    if chosen is None:
        raise NotFound("the series has no images")
    return _single(chosen.file_hash, chosen.frame, params, {})


@bp.get(INSTANCE + "/thumbnail")
def instance_thumbnail(study_uid: str, series_uid: str, sop_uid: str) -> Response:
    params = _params(thumbnail=True)
    ref = find_instance_ref(require_principal(), study_uid, series_uid, sop_uid)
    return _single(ref.file_hash, (ref.number_of_frames + 1) // 2, params, {})


@bp.get(INSTANCE + "/frames/<frames>/thumbnail")
def frame_thumbnail(study_uid: str, series_uid: str, sop_uid: str, frames: str) -> Response:
    params = _params(thumbnail=True)
    ref = find_instance_ref(require_principal(), study_uid, series_uid, sop_uid)
    number = _parse_frames(frames, ref.number_of_frames)[0]
    return _single(ref.file_hash, number, params, {})

