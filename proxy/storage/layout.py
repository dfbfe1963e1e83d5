"""Where the proxy keeps its own files: one reserved layout for every backend.

They live in the same directory or bucket as the objects, under a first segment that
no key may use (rules.keys refuses it), so that publishing a finished upload is a
rename on one file system or bucket. A local path is the root joined with one of
these keys; S3 uses them as they are.

- ``tmp/``: local only. Uploads in progress, on the objects' file system so that a
  finished one is renamed into place, and resumable uploads being built or removed.
  Each process keeps them in ``tmp/<id>.process/``, a directory it holds locked for
  its life (local.leftovers); entries straight in ``tmp/`` are older versions'.
- ``meta/<h2>/<h>.json``: local only. An object's content type and SHA-256, named
  by the SHA-256 ``h`` of its key (``h2``: its first two hex digits), so that no key
  collides with another's metadata (``a`` and ``a.json/b``) or makes a file name
  longer than a file system takes. It names the version of the file it describes
  (inode, size, mtime), and is ignored once the file is another.
- ``locks/<h2>``: local only. ``LOCK_STRIPES`` empty files, the key's ``h2`` picking
  one, that every process sharing the root flocks to rename an object and its
  metadata into place, or to remove both (local.keylocks). Made on first use and
  never removed: a delete prunes emptied ``meta/`` directories, so a lock kept
  beside the metadata would vanish under its holders, and one file per key would
  pile up. The number is part of the layout: processes that disagreed on it would
  lock different files for one key.
- ``uploads/<id>/``: one resumable upload. ``state.json`` on both backends; locally
  also ``data`` (the bytes so far) and ``lock``; on S3 ``tail-<token>``, the bytes
  that do not yet fill a part, and ``object``, where its multipart upload is
  assembled before it is copied to its key (s3.publish). A partial upload (tus
  concatenation) keeps its bytes there once complete (sealed): locally in ``data``,
  on S3 in ``object`` (whose ETag its state records), until a final upload has
  copied them into its object and removed the partial, or it is terminated or
  expires. A final is assembled like a PUT, at a writer's ``staging-<uuid>``.
- ``writers/<writer>/``: S3 only. One per process that writes objects (s3.writers):
  ``alive``, rewritten as its heartbeat, and ``upload-<h>`` for each multipart upload
  it has started and not yet completed or aborted, so that others can abort those
  once it is dead; ``staging-<uuid>``, an object it assembled and has not yet copied
  to its key (s3.publish), which others remove once it is dead.
- ``jobs/``: both backends; the durable job queue (proxy.jobs). Files are named by
  the SHA-256 ``h`` of the job's key (the source object's key), never by the key.
  ``records/<h2>/<h>.json`` is a job's record (state, progress, result, generation,
  attempt; on S3 also the claim's lease), kept until the job is removed.
  ``queue/<h>`` exists while the job is queued or running, so that looking for
  work lists only those and never every finished job. Locally also ``lock``, flocked
  for a moment around every read-modify-write of a record, and ``run/<h>``, flocked
  by the process that runs the job for as long as it does (the kernel lets go when
  the process dies); it is removed, under ``lock``, when the claim ends.
"""

from __future__ import annotations

import hashlib

from proxy.rules.keys import INTERNAL_PREFIX

INTERNAL = INTERNAL_PREFIX + "/"
TMP = INTERNAL + "tmp/"
META = INTERNAL + "meta/"
UPLOADS = INTERNAL + "uploads/"
WRITERS = INTERNAL + "writers/"
LOCKS = INTERNAL + "locks/"
JOBS = INTERNAL + "jobs/"
JOB_RECORDS = JOBS + "records/"
JOB_QUEUE = JOBS + "queue/"
JOB_RUN = JOBS + "run/"
JOB_LOCK = JOBS + "lock"

# The stripes under LOCKS, named by two hex digits of a key's hash (lock_key): few
# enough to make at first use, enough that unrelated keys seldom wait for each other.
LOCK_STRIPES = 16 * 16

# The files of one resumable upload, under upload_prefix().
UPLOAD_STATE = "state.json"
UPLOAD_DATA = "data"
UPLOAD_LOCK = "lock"

# The directory of one process under tmp/ ends so; anything else there is older.
TMP_PROCESS_SUFFIX = ".process"
# The files of one writer, under writer_prefix().
WRITER_ALIVE = "alive"
WRITER_UPLOAD = "upload-"
WRITER_STAGING = "staging-"
# Where a resumable upload's multipart upload is assembled, under upload_prefix().
UPLOAD_OBJECT = "object"


def is_internal(key: str) -> bool:
    """Whether a key found in the directory or bucket is one of the proxy's own."""
    return key.startswith(INTERNAL)


def meta_key(key: str) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{META}{digest[:2]}/{digest}.json"


def lock_key(key: str) -> str:
    """The lock file of ``key``'s stripe, one of ``LOCK_STRIPES``."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{LOCKS}{digest[:2]}"


def upload_prefix(upload_id: str) -> str:
    return f"{UPLOADS}{upload_id}/"


def upload_state_key(upload_id: str) -> str:
    return upload_prefix(upload_id) + UPLOAD_STATE


def upload_tail_key(upload_id: str, token: str) -> str:
    return upload_prefix(upload_id) + f"tail-{token}"


def upload_object_key(upload_id: str) -> str:
    return upload_prefix(upload_id) + UPLOAD_OBJECT


def upload_id_of(prefix: str) -> str:
    """The id in an ``upload_prefix()``, as a delimited listing returns it."""
    return prefix.removeprefix(UPLOADS).removesuffix("/")


def writer_prefix(writer_id: str) -> str:
    return f"{WRITERS}{writer_id}/"


def writer_alive_key(writer_id: str) -> str:
    return writer_prefix(writer_id) + WRITER_ALIVE


def writer_upload_key(writer_id: str, upload_id: str) -> str:
    """The record of a multipart upload ``writer_id`` started; named by the upload id's
    hash, since ids are the server's text of any length."""
    digest = hashlib.sha256(upload_id.encode("utf-8")).hexdigest()[:32]
    return writer_prefix(writer_id) + WRITER_UPLOAD + digest


def writer_staging_key(writer_id: str, name: str) -> str:
    """Where ``writer_id`` assembles one object before publishing it."""
    return writer_prefix(writer_id) + WRITER_STAGING + name


def job_digest(key: str) -> str:
    """The name of a job's files: its key's SHA-256, so any key gives a short name."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def job_record_key(key: str) -> str:
    return job_record_key_of(job_digest(key))


def job_record_key_of(digest: str) -> str:
    """The record of the job whose ``job_digest`` is ``digest`` (a queue entry's name)."""
    return f"{JOB_RECORDS}{digest[:2]}/{digest}.json"


def job_queue_key(key: str) -> str:
    """The entry that exists while the job ``key`` is queued or running."""
    return JOB_QUEUE + job_digest(key)


def job_run_key(key: str) -> str:
    """Local only: the file flocked by the process running the job ``key``."""
    return JOB_RUN + job_digest(key)
