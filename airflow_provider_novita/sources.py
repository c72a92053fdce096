"""
Source images in object storage: checked before anything is submitted, signed right before each
submission.

Novita fetches a source itself, so an object storage URI (``s3://[conn_id@]bucket/key``, or any
scheme of Airflow's object storage whose filesystem can sign: s3fs, gcsfs and adlfs can) becomes a
pre-signed GET URL made with the storage connection's own credentials and valid for
``source_url_expiry`` seconds. That URL is a credential: it goes into the body of the submission and
nowhere else. Records, log lines, lineage, retry memory keys and file names name the source as the
DAG gave it, so that a retry, which signs again, still recognises the same image.

Everything that can be known before paying is checked before the first submission: the connection
the URI names exists, its filesystem can sign, and the object exists (Novita would bill a task that
fails to fetch it). A source that cannot work raises a ValueError naming it and what is wrong; a
store that did not answer raises :class:`~airflow_provider_novita.exceptions.NovitaStorageError`,
which may pass on a retry. Runs in the worker only: these are blocking calls to the storage.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from airflow.sdk import BaseHook, ObjectStoragePath
from fsspec import AbstractFileSystem

from airflow_provider_novita._compat import AirflowNotFoundException, storage_conn_id
from airflow_provider_novita.exceptions import NovitaStorageError
from airflow_provider_novita.models import is_storage_uri, redact_url
from airflow_provider_novita.storage import without_queries

if TYPE_CHECKING:
    from collections.abc import Iterable

DEFAULT_SOURCE_URL_EXPIRY = 3600.0
# Existence checks of one batch in flight at once: each is one small request to the storage.
CHECK_CONCURRENCY = 8


def as_sources(image: object) -> object:
    """``image`` with each ``ObjectStoragePath`` (alone or in a list) as its URI, connection id included."""
    if isinstance(image, ObjectStoragePath):
        return str(image)
    if isinstance(image, (list, tuple)):
        return [str(item) if isinstance(item, ObjectStoragePath) else item for item in image]
    return image


class SourceSigner:
    """
    Signs the object storage sources of one try; http(s) sources pass through unchanged.

    :meth:`prepare` runs in the task's own thread: making a filesystem looks its Airflow connection up,
    which talks to the supervisor, and that channel is not made for threads. :meth:`url` may then run
    in any thread, on the filesystems made here.

    :param expiry: seconds for which a signed URL is valid.
    """

    def __init__(self, expiry: float) -> None:
        self.expiry = expiry
        self._paths: dict[str, ObjectStoragePath] = {}
        self._connections: set[str] = set()

    def prepare(self, sources: Iterable[tuple[str, bool]]) -> None:
        """
        Check the storage sources among ``sources`` (source, whether its object must exist) and make
        their filesystems; raise a ValueError naming ``image`` for the first that cannot work, or a
        NovitaStorageError for the first whose store did not answer.

        An image that an earlier try already submitted is not required to exist: a retry reattaches to
        its task if it can, and signs it only if it cannot.
        """
        to_check = []
        for source, must_exist in sources:
            if not is_storage_uri(source):
                continue
            if source not in self._paths:
                self._paths[source] = self._path(source)
            if must_exist and source not in to_check:
                to_check.append(source)
        with ThreadPoolExecutor(CHECK_CONCURRENCY, thread_name_prefix="novita-check") as pool:
            for source, exists in zip(to_check, pool.map(self._exists, to_check), strict=True):
                if not exists:
                    raise _refused(
                        source,
                        "its object does not exist (checked before submitting: Novita bills a failed fetch)",
                    )

    def url(self, source: str) -> str:
        """The URL Novita fetches for ``source``: a fresh signature for a storage URI (prepared first)."""
        if not is_storage_uri(source):
            return source
        path = self._paths[source]
        try:
            signed = path.fs.sign(path.path, expiration=int(self.expiry))  # type: ignore[no-untyped-call]
        except Exception as err:
            raise NovitaStorageError(
                f"image {_shown(source)} could not be signed by its store: {_brief(err)}"
            ) from None
        if not isinstance(signed, str) or is_storage_uri(signed):
            raise _refused(source, "its filesystem signed it into something other than an http(s) URL")
        return signed

    def _path(self, source: str) -> ObjectStoragePath:
        try:
            path = ObjectStoragePath(source)
            conn_id = storage_conn_id(path)
        except Exception as err:
            raise _unhandled(source, err) from None
        if conn_id and conn_id not in self._connections:
            try:
                BaseHook.get_connection(conn_id)
            except AirflowNotFoundException:
                raise _refused(source, f"its Airflow connection {conn_id!r} does not exist") from None
            self._connections.add(conn_id)
        try:
            fs = path.fs
        except Exception as err:
            raise _unhandled(source, err) from None
        if type(fs).sign is AbstractFileSystem.sign:
            raise _refused(
                source, f"its filesystem ({type(fs).__name__}) cannot sign URLs, so Novita could not fetch it"
            )
        return path

    def _exists(self, source: str) -> bool:
        """Whether the object of ``source`` is there; a store that does not answer may on a retry."""
        try:
            return bool(self._paths[source].exists())
        except Exception as err:
            raise NovitaStorageError(
                f"image {_shown(source)}: whether its object exists could not be checked: {_brief(err)}"
            ) from None


def _brief(err: Exception) -> str:
    """An error in a few words, with any query string (a signature) cut out."""
    return without_queries(f"{type(err).__name__}: {str(err)[:200]}")


def _unhandled(source: str, err: Exception) -> ValueError:
    scheme = urlsplit(source).scheme
    return _refused(
        source,
        f"no object storage filesystem handles {scheme}:// here ({_brief(err)}); install the Airflow "
        "provider for it (or attach its filesystem)",
    )


def _shown(source: str) -> str:
    """A storage URI as every message and log line shows it: ``s3://conn_id@bucket/key``, no query."""
    return repr(redact_url(source))


def _refused(source: str, problem: str) -> ValueError:
    """A well-formed source that cannot work: what is wrong with it, not what a source may be."""
    return ValueError(f"image {_shown(source)} cannot be submitted: {problem}")
