"""The S3 server the object-store tests use (tests/seaweed.py): a real SeaweedFS, reached by
s3fs through nothing but the standard AWS variables."""
import pytest


def test_s3fs_writes_and_reads_through_the_aws_variables(s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()  # endpoint, keys and region from AWS_* only
    fs.invalidate_cache()
    fs.pipe(f"{s3_bucket}/a/b.bin", b"\x00\x01payload")
    assert fs.cat(f"{s3_bucket}/a/b.bin") == b"\x00\x01payload"
    assert fs.ls(f"{s3_bucket}/a") == [f"{s3_bucket}/a/b.bin"]
    assert fs.ls(s3_bucket) == [f"{s3_bucket}/a"]


def test_each_bucket_starts_empty(s3_server):
    a, b = s3_server.bucket(), s3_server.bucket()
    try:
        _check_separate(s3_server, a, b)
    finally:
        s3_server.drop(a), s3_server.drop(b)


def _check_separate(s3_server, a, b):
    fs = s3_server.filesystem()
    fs.pipe(f"{a}/x", b"1")
    assert a != b and fs.ls(b) == []


def test_wrong_keys_are_refused(s3_server, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem(key=s3_server.access_key, secret="wrong", endpoint_url=s3_server.endpoint)
    with pytest.raises(PermissionError):
        fs.pipe(f"{s3_bucket}/x", b"1")


def test_conditional_create_refuses_an_existing_object(s3_server, s3_bucket):
    """If-None-Match: * (the object-store locks rely on it) holds on this server."""
    fs = s3_server.filesystem()
    fs.pipe(f"{s3_bucket}/lock", b"first", IfNoneMatch="*")
    with pytest.raises(OSError, match="pre-condition"):
        fs.pipe(f"{s3_bucket}/lock", b"second", IfNoneMatch="*")
    assert fs.cat(f"{s3_bucket}/lock") == b"first"
