"""/videos/{key}: the video made of the object ``key`` (proxy/video/).

- GET: ``{"key", "state", "progress", "reason", "info", "hls", "poster",
  "thumbnail", "renditions"}``; ``hls``, ``poster`` and ``thumbnail`` are /files/
  paths once the job is done, else null. 404 when the key has no job.
- POST: (re)queue the job of an existing object, 202 with that JSON; media or not,
  so that a file that is no video fails "not a video" when a user asks.
- DELETE: the job and every derived file, 204 (also when there was none).

With video off (video.enabled = false, or no ffmpeg) these routes are not served:
every one is 404, and the web page plays the original object.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from proxy.jobs.base import Job, JobNotFound
from proxy.video.service import VideoService
from proxy.web.errors import ApiError
from proxy.web.requests import object_key
from proxy.web.settings import VIDEOS

BASE = "/videos"
# What a job's result names by key, answered as /files/ paths when done.
_PATHS = ("hls", "poster", "thumbnail")


def _service(request: web.Request) -> VideoService:
    videos = request.app[VIDEOS]
    if videos is None:  # routes.py serves /videos/ only with video on
        raise ApiError(404, "not_found", "this server makes no videos")
    return videos


def _no_job(key: str) -> ApiError:
    return ApiError(404, "not_found", f"no video job for {key}")


def job_json(job: Job) -> dict[str, Any]:
    result = job.result
    done = job.state == "done"
    answer: dict[str, Any] = {
        "key": job.key,
        "state": job.state,
        "progress": job.progress,
        "reason": job.reason,
        "info": result.get("info"),
        "renditions": result.get("renditions", []) if done else [],
    }
    for name in _PATHS:
        derived = result.get(name)
        answer[name] = "/files/" + quote(derived, safe="/") if done and isinstance(derived, str) else None
    return answer


async def get_video(request: web.Request) -> web.Response:
    key = object_key(request)
    videos = _service(request)
    try:
        job = await videos.look(key)
    except JobNotFound:
        raise _no_job(key) from None
    return web.json_response(job_json(job), headers={"Cache-Control": "no-store"})


async def post_video(request: web.Request) -> web.Response:
    key = object_key(request)
    job = await _service(request).requeue(key)  # ObjectNotFound: 404
    return web.json_response(job_json(job), status=202)


async def delete_video(request: web.Request) -> web.Response:
    key = object_key(request)
    await _service(request).forget(key)
    return web.Response(status=204)
