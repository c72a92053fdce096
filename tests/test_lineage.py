"""OpenLineage dataset names of source URLs and persisted files, and what the operator reports."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_novita.lineage import DatasetName, dataset_name, dataset_names, operator_lineage
from airflow_provider_novita.operators.upscale import UpscaleOperator


@pytest.mark.parametrize(
    ("uri", "namespace", "name"),
    [
        # Source URLs: the spec's general rule, scheme://authority and path.
        ("https://img.example.com/a/cat.png", "https://img.example.com", "/a/cat.png"),
        ("http://127.0.0.1:8765/samples/x.png", "http://127.0.0.1:8765", "/samples/x.png"),
        ("https://IMG.Example.com:443/a.png", "https://img.example.com", "/a.png"),
        ("http://img.example.com:80/a.png", "http://img.example.com", "/a.png"),
        ("http://img.example.com:443/a.png", "http://img.example.com:443", "/a.png"),
        ("https://img.example.com", "https://img.example.com", "/"),
        ("http://[::1]:8080/a.png", "http://[::1]:8080", "/a.png"),
        # Pre-signed: the query string is the credential, and differs from one signing to the next.
        (
            "https://bucket.s3.amazonaws.com/a.png?X-Amz-Signature=abc&X-Amz-Credential=AKIA#frag",
            "https://bucket.s3.amazonaws.com",
            "/a.png",
        ),
        ("https://user:secret@img.example.com/a.png", "https://img.example.com", "/a.png"),
        # A port Novita may accept but urllib cannot read as a number.
        ("https://img.example.com:99999/a.png", "https://img.example.com:99999", "/a.png"),
        # Persisted files, as str(ObjectStoragePath) gives them: the connection id is no part of the name.
        ("s3://aws_default@bucket/prefix/cat-2k-0a1b2c3d.png", "s3://bucket", "prefix/cat-2k-0a1b2c3d.png"),
        ("s3://bucket/cat.png", "s3://bucket", "cat.png"),
        ("s3a://bucket/cat.png", "s3://bucket", "cat.png"),
        ("gs://google_cloud_default@bucket/up/cat.png", "gs://bucket", "up/cat.png"),
        ("gcs://bucket/up/cat.png", "gs://bucket", "up/cat.png"),
        ("file:///data/up/cat.png", "file", "/data/up/cat.png"),
        ("/data/up/cat.png", "file", "/data/up/cat.png"),
        ("file://nas/data/cat.png", "file://nas", "/data/cat.png"),
        ("memory://bucket/up/cat.png", "memory://bucket", "/up/cat.png"),
        ("hdfs://namenode:8020/up/cat.png", "hdfs://namenode:8020", "/up/cat.png"),
    ],
)
def test_dataset_names_follow_the_openlineage_naming_spec(uri: str, namespace: str, name: str) -> None:
    assert dataset_name(uri) == DatasetName(namespace, name)


def test_the_same_image_signed_twice_is_one_dataset() -> None:
    assert dataset_names(
        [
            "https://img.example.com/a.png?sig=1",
            "https://img.example.com/b.png",
            "https://img.example.com/a.png?sig=2",
        ]
    ) == [DatasetName("https://img.example.com", "/a.png"), DatasetName("https://img.example.com", "/b.png")]


def test_operator_lineage_is_what_the_openlineage_provider_expects() -> None:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    lineage = operator_lineage(["https://img.example.com/a.png?sig=1"], ["s3://conn@bucket/up/a.png"])

    assert isinstance(lineage, OperatorLineage)
    assert lineage.inputs == [Dataset(namespace="https://img.example.com", name="/a.png")]
    assert lineage.outputs == [Dataset(namespace="s3://bucket", name="up/a.png")]


_PLAIN = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=10)
# Every secret holds an upper-case X, which no scheme, host or path drawn here contains, so finding it in
# a name can only mean that it leaked; the rest may be anything a query, fragment or user info holds.
_SECRET = st.text(alphabet="XYZ=&%+/?@:;", max_size=20).map(lambda text: f"X{text}")
_USER_SECRET = st.text(alphabet="XYZ=&%+;", max_size=20).map(lambda text: f"X{text}")


@settings(derandomize=True, database=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTPS", "s3", "gs", "gcs", "file", "memory", "hdfs", "abfs"]),
    user=st.one_of(st.none(), _USER_SECRET),
    password=st.one_of(st.none(), _USER_SECRET),
    host=_PLAIN,
    port=st.one_of(st.none(), st.integers(min_value=0, max_value=65535)),
    path=st.lists(_PLAIN, max_size=4).map(lambda parts: "".join(f"/{part}" for part in parts)),
    query=st.one_of(st.none(), _SECRET),
    fragment=st.one_of(st.none(), _SECRET),
)
def test_no_query_fragment_or_user_info_ever_reaches_a_dataset(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    path: str,
    query: str | None,
    fragment: str | None,
) -> None:
    userinfo = f"{user or ''}:{password}@" if password is not None else (f"{user}@" if user else "")
    uri = (
        f"{scheme}://{userinfo}{host}{'' if port is None else f':{port}'}{path}"
        f"{'' if query is None else f'?{query}'}{'' if fragment is None else f'#{fragment}'}"
    )

    dataset = dataset_name(uri)

    for secret in (user, password, query, fragment):
        if secret is not None:
            assert secret not in dataset.namespace, uri
            assert secret not in dataset.name, uri
    assert "@" not in dataset.namespace + dataset.name, uri


class TestOperator:
    def test_reports_the_sources_and_no_file_before_the_batch_is_finished(self) -> None:
        op = UpscaleOperator(
            task_id="t", image=["https://img.example.com/a.png?sig=1", "https://img.example.com/b.png"]
        )
        lineage = op.get_openlineage_facets_on_complete(None)
        assert [(d.namespace, d.name) for d in lineage.inputs] == [
            ("https://img.example.com", "/a.png"),
            ("https://img.example.com", "/b.png"),
        ]
        assert lineage.outputs == []

    def test_reports_nothing_for_a_batch_refused_before_submitting(self) -> None:
        op = UpscaleOperator(task_id="t", image="{{ params.images }}")
        op.image = "not a URL"
        lineage = op.get_openlineage_facets_on_complete(None)
        assert (lineage.inputs, lineage.outputs) == ([], [])
