"""
OpenLineage datasets of what an upscale read (source image URLs) and wrote (files in ``output_path``).

Names follow the OpenLineage naming spec (https://openlineage.io/docs/spec/naming, "Dataset Naming";
``spec/Naming.md`` in the OpenLineage repository), so that the same image or file reported by another
tool, or by another Airflow task reading the file through object storage, is the same node of the
lineage graph:

* ``s3://bucket/key`` -> namespace ``s3://bucket``, name ``key`` (``s3a``, ``s3n`` are S3 too);
* ``gs://bucket/key`` -> namespace ``gs://bucket``, name ``key`` (``gcs`` is GCS too);
* ``file:///abs/path`` or a plain absolute path -> namespace ``file``, name ``/abs/path`` ("Local file
  system"); ``file://host/path`` -> namespace ``file://host``, name ``/path`` ("Remote file system");
* anything else, http(s) source URLs included, by the spec's general rule that a dataset's namespace
  and name together form its URI, ``scheme:[//authority]path``: namespace ``scheme://authority``
  (``scheme`` alone when there is no authority), name the path. For http(s) the host is lowercased, a
  default port (80, 443) dropped and an empty path is ``/``, so equal URLs give equal names. Azure
  (``abfs://container/path``) gets this rule too: the spec's ``abfss://{container}@{service}...``
  namespace needs the storage account, which is in the Airflow connection, not in the URI.

Two things never reach a name or a namespace, because lineage events are stored and shown far and wide:

* the query string and the fragment: source URLs are often pre-signed, and their query string is the
  credential (it also differs from one signing to the next, so keeping it would split one image into
  many datasets);
* the user info before ``@``: in a URL a credential, in an Airflow object storage URI
  (``s3://aws_default@bucket/...``) the Airflow connection id, which names no part of the data.

The OpenLineage classes are imported only by :func:`operator_lineage`, which only the OpenLineage
provider calls: it is an optional install, and a DAG file must parse without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow.providers.common.compat.openlineage.facet import Dataset, RunFacet
    from airflow.providers.openlineage.extractors import OperatorLineage

_OBJECT_STORES = {"s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gs", "gcs": "gs"}
# fsspec's names for the local file system; no scheme at all is a plain path (see storage.output_root).
_LOCAL = ("", "file", "local")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


@dataclass(frozen=True)
class DatasetName:
    """The identity of an OpenLineage dataset: its namespace and its name within the namespace."""

    namespace: str
    name: str


def dataset_name(uri: str) -> DatasetName:
    """The OpenLineage dataset a source URL or a persisted file's URI names (see the module docstring)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    # From the raw netloc rather than .hostname and .port: .port raises on a malformed port, and a name
    # must still come out of any URL the operator accepted.
    authority = parts.netloc.rpartition("@")[2]
    if scheme in _OBJECT_STORES:
        return DatasetName(f"{_OBJECT_STORES[scheme]}://{authority}", parts.path.lstrip("/"))
    if scheme in _LOCAL:
        return DatasetName(f"file://{authority}" if authority else "file", parts.path)
    if scheme in _DEFAULT_PORTS:
        authority = authority.lower().removesuffix(_DEFAULT_PORTS[scheme]).rstrip(":")
        return DatasetName(f"{scheme}://{authority}", parts.path or "/")
    return DatasetName(f"{scheme}://{authority}" if authority else scheme, parts.path)


def dataset_names(uris: Iterable[str]) -> list[DatasetName]:
    """The datasets of ``uris``, each once, in first-seen order: two signings of one URL are one image."""
    return list(dict.fromkeys(dataset_name(uri) for uri in uris))


def operator_lineage(sources: Iterable[str], outputs: Iterable[str]) -> OperatorLineage[Dataset, RunFacet]:
    """What ``get_openlineage_facets_on_*`` returns: the datasets of ``sources`` and of ``outputs``."""
    # Only the OpenLineage provider calls this, so it is installed whenever these imports run.
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=[Dataset(namespace=d.namespace, name=d.name) for d in dataset_names(sources)],
        outputs=[Dataset(namespace=d.namespace, name=d.name) for d in dataset_names(outputs)],
    )
