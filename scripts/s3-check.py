#!/usr/bin/env python3
"""Drives a running `mspace gateway` with real S3 clients (boto3, the AWS CLI, rclone) and
checks every answer against what S3 gives. Prints one row per check (client, operation,
expected, got) and exits 1 if any differs.

    python scripts/s3-check.py --endpoint http://127.0.0.1:9000 --access-key AK \
        --secret-file gw/gateway.secret [--big-mib 24] [--work DIR]

With --phase crash-before it stores an object, uploads one part of a multipart upload,
prints the upload id, then sends half of an 8 MiB PUT, prints MID-PUT and waits (the
caller kills the gateway with SIGKILL and starts it again); --phase crash-after --upload
ID then checks that the stored object and the part survived and the torn PUT left nothing.

The python must have boto3 (scripts/s3-clients.sh prints one that has, with the AWS CLI
beside it); rclone is taken from PATH.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

ROWS = []


def row(client, op, expected, got):
    ok = expected == got
    ROWS.append((client, op, str(expected), str(got), ok))
    print(f"{'ok ' if ok else 'BAD'} | {client:6} | {op:58} | {expected!s:24} | {got!s}", flush=True)


def code(fn):
    """The S3 error code a call answers with, or 'ok'."""
    try:
        fn()
        return "ok"
    except ClientError as e:
        return e.response.get("Error", {}).get("Code", "?")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--access-key", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--big-mib", type=int, default=24)
    ap.add_argument("--work")
    ap.add_argument("--phase", choices=["table", "crash-before", "crash-after", "deal-put", "deal-get",
                                        "drop-put", "drop-delete-a", "drop-delete-b"],
                    default="table")
    ap.add_argument("--upload")
    a = ap.parse_args()
    secret = open(a.secret_file).read().strip()
    work = a.work or tempfile.mkdtemp(prefix="s3-check-")
    os.makedirs(work, exist_ok=True)
    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})

    def client(ak=a.access_key, sk=secret):
        return boto3.client("s3", endpoint_url=a.endpoint, aws_access_key_id=ak,
                            aws_secret_access_key=sk, region_name="us-east-1", config=cfg)

    s3 = client()
    if a.phase.startswith("crash"):
        return crash(a, s3)
    if a.phase.startswith("deal"):
        return deals(a, s3)
    if a.phase.startswith("drop"):
        return drops(a, s3)
    B = "alpha"
    # Buckets.
    row("boto3", "CreateBucket alpha", "ok", code(lambda: s3.create_bucket(Bucket=B)))
    row("boto3", "CreateBucket alpha again", "BucketAlreadyOwnedByYou",
        code(lambda: s3.create_bucket(Bucket=B)))
    row("boto3", "CreateBucket Bad_Name", "InvalidBucketName",
        code(lambda: s3.create_bucket(Bucket="Bad_Name")))
    row("boto3", "HeadBucket missing", "404", code(lambda: s3.head_bucket(Bucket="missing")))
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    row("boto3", "ListBuckets", True, B in names)

    # Objects.
    data = os.urandom(300_001)
    put = s3.put_object(Bucket=B, Key="docs/a.bin", Body=data, ContentType="application/x-test",
                        Metadata={"colour": "blue"})
    row("boto3", "PutObject: ETag is the MD5", '"%s"' % hashlib.md5(data).hexdigest(), put["ETag"])
    got = s3.get_object(Bucket=B, Key="docs/a.bin")
    row("boto3", "GetObject: bytes", True, got["Body"].read() == data)
    row("boto3", "GetObject: content type and metadata", ("application/x-test", {"colour": "blue"}),
        (got["ContentType"], got["Metadata"]))
    head = s3.head_object(Bucket=B, Key="docs/a.bin")
    row("boto3", "HeadObject: length and ETag", (len(data), put["ETag"]),
        (head["ContentLength"], head["ETag"]))
    empty = s3.put_object(Bucket=B, Key="empty", Body=b"")
    row("boto3", "PutObject empty: ETag", '"d41d8cd98f00b204e9800998ecf8427e"', empty["ETag"])
    row("boto3", "GetObject empty", b"", s3.get_object(Bucket=B, Key="empty")["Body"].read())
    row("boto3", "GetObject missing key", "NoSuchKey",
        code(lambda: s3.get_object(Bucket=B, Key="nope")))
    row("boto3", "GetObject missing bucket", "NoSuchBucket",
        code(lambda: s3.get_object(Bucket="missing", Key="x")))
    row("boto3", "HeadObject missing key", "404", code(lambda: s3.head_object(Bucket=B, Key="nope")))

    # Ranges.
    r = s3.get_object(Bucket=B, Key="docs/a.bin", Range="bytes=10-19")
    row("boto3", "GetObject Range bytes=10-19",
        ("bytes 10-19/300001", data[10:20]), (r["ContentRange"], r["Body"].read()))
    r = s3.get_object(Bucket=B, Key="docs/a.bin", Range="bytes=-5")
    row("boto3", "GetObject Range bytes=-5", data[-5:], r["Body"].read())
    r = s3.get_object(Bucket=B, Key="docs/a.bin", Range="bytes=300000-")
    row("boto3", "GetObject Range bytes=300000-", data[300000:], r["Body"].read())
    row("boto3", "GetObject Range past the end", "InvalidRange",
        code(lambda: s3.get_object(Bucket=B, Key="docs/a.bin", Range="bytes=400000-")))

    # Conditions.
    row("boto3", "PutObject If-None-Match * on an existing key", "PreconditionFailed",
        code(lambda: s3.put_object(Bucket=B, Key="docs/a.bin", Body=b"x", IfNoneMatch="*")))
    row("boto3", "PutObject If-None-Match * on a new key", "ok",
        code(lambda: s3.put_object(Bucket=B, Key="once", Body=b"x", IfNoneMatch="*")))
    row("boto3", "GetObject If-Match another ETag", "PreconditionFailed",
        code(lambda: s3.get_object(Bucket=B, Key="docs/a.bin", IfMatch='"0000"')))
    row("boto3", "GetObject If-Match its ETag", "ok",
        code(lambda: s3.get_object(Bucket=B, Key="docs/a.bin", IfMatch=put["ETag"])))
    row("boto3", "GetObject If-None-Match its ETag", "304",
        code(lambda: s3.get_object(Bucket=B, Key="docs/a.bin", IfNoneMatch=put["ETag"])))
    row("boto3", "HeadObject If-Modified-Since the future", "304",
        code(lambda: s3.head_object(Bucket=B, Key="docs/a.bin",
                                    IfModifiedSince="Fri, 01 Jan 2100 00:00:00 GMT")))

    # Copy.
    c = s3.copy_object(Bucket=B, Key="copy.bin", CopySource={"Bucket": B, "Key": "docs/a.bin"})
    row("boto3", "CopyObject: same ETag", put["ETag"], c["CopyObjectResult"]["ETag"])
    row("boto3", "GetObject of the copy", True,
        s3.get_object(Bucket=B, Key="copy.bin")["Body"].read() == data)
    row("boto3", "CopyObject from a missing key", "NoSuchKey",
        code(lambda: s3.copy_object(Bucket=B, Key="c2", CopySource={"Bucket": B, "Key": "nope"})))

    # Listing.
    L = "listing"
    s3.create_bucket(Bucket=L)
    keys = ["a/1", "a/2", "a/b/3", "b", "c/x", "d e+f", "z"]
    for k in keys:
        s3.put_object(Bucket=L, Key=k, Body=k.encode())
    top = s3.list_objects_v2(Bucket=L, Delimiter="/")
    row("boto3", "ListObjectsV2 delimiter /",
        (["b", "d e+f", "z"], ["a/", "c/"]),
        ([o["Key"] for o in top.get("Contents", [])], [p["Prefix"] for p in top.get("CommonPrefixes", [])]))
    sub = s3.list_objects_v2(Bucket=L, Prefix="a/", Delimiter="/")
    row("boto3", "ListObjectsV2 prefix a/ delimiter /", (["a/1", "a/2"], ["a/b/"]),
        ([o["Key"] for o in sub.get("Contents", [])], [p["Prefix"] for p in sub.get("CommonPrefixes", [])]))
    seen, token, pages = [], None, 0
    while True:
        kw = {"Bucket": L, "MaxKeys": 2}
        if token:
            kw["ContinuationToken"] = token
        p = s3.list_objects_v2(**kw)
        pages += 1
        seen += [o["Key"] for o in p.get("Contents", [])]
        if not p["IsTruncated"]:
            break
        token = p["NextContinuationToken"]
    row("boto3", "ListObjectsV2 pages of 2 with continuation tokens", (sorted(keys), 4), (seen, pages))
    sa = s3.list_objects_v2(Bucket=L, StartAfter="b")
    row("boto3", "ListObjectsV2 StartAfter b", ["c/x", "d e+f", "z"], [o["Key"] for o in sa.get("Contents", [])])
    v1 = s3.list_objects(Bucket=L, Marker="a/2", MaxKeys=2)
    row("boto3", "ListObjects (v1) Marker a/2 MaxKeys 2", (["a/b/3", "b"], True),
        ([o["Key"] for o in v1.get("Contents", [])], v1["IsTruncated"]))
    row("boto3", "ListObjectsV2 missing bucket", "NoSuchBucket",
        code(lambda: s3.list_objects_v2(Bucket="missing")))

    # Multipart.
    MiB = 1 << 20
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(MiB + 7)]
    up = s3.create_multipart_upload(Bucket=B, Key="multi.bin", ContentType="application/x-multi")
    uid = up["UploadId"]
    etags = []
    for i, d in enumerate(parts_data, 1):
        etags.append(s3.upload_part(Bucket=B, Key="multi.bin", UploadId=uid, PartNumber=i, Body=d)["ETag"])
    row("boto3", "UploadPart: ETags are the parts' MD5",
        ['"%s"' % hashlib.md5(d).hexdigest() for d in parts_data], etags)
    lp = s3.list_parts(Bucket=B, Key="multi.bin", UploadId=uid)
    row("boto3", "ListParts", [(1, 5 * MiB), (2, 5 * MiB), (3, MiB + 7)],
        [(p["PartNumber"], p["Size"]) for p in lp["Parts"]])
    row("boto3", "CompleteMultipartUpload with a wrong ETag", "InvalidPart",
        code(lambda: s3.complete_multipart_upload(
            Bucket=B, Key="multi.bin", UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00"'}]})))
    row("boto3", "CompleteMultipartUpload parts out of order", "InvalidPartOrder",
        code(lambda: s3.complete_multipart_upload(
            Bucket=B, Key="multi.bin", UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": etags[1]},
                                       {"PartNumber": 1, "ETag": etags[0]}]})))
    done = s3.complete_multipart_upload(
        Bucket=B, Key="multi.bin", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]})
    want = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in parts_data)).hexdigest()
    row("boto3", "CompleteMultipartUpload: ETag", '"%s-3"' % want, done["ETag"])
    whole = b"".join(parts_data)
    g = s3.get_object(Bucket=B, Key="multi.bin")
    row("boto3", "GetObject of the multipart object", (True, "application/x-multi"),
        (g["Body"].read() == whole, g["ContentType"]))
    # Each part is a sealed file of its own: ranges across their seams.
    for lo, hi in [(5 * MiB - 10, 5 * MiB + 9), (5 * MiB - 1, 10 * MiB), (3, 11 * MiB + 6), (10 * MiB, 11 * MiB + 6)]:
        r = s3.get_object(Bucket=B, Key="multi.bin", Range=f"bytes={lo}-{hi}")
        row("boto3", f"ranged GetObject {lo}-{hi} of the multipart object", (True, hi - lo + 1),
            (r["Body"].read() == whole[lo:hi + 1], r["ContentLength"]))
    row("boto3", "ListParts after completion", "NoSuchUpload",
        code(lambda: s3.list_parts(Bucket=B, Key="multi.bin", UploadId=uid)))
    small = s3.create_multipart_upload(Bucket=B, Key="small.bin")["UploadId"]
    se = [s3.upload_part(Bucket=B, Key="small.bin", UploadId=small, PartNumber=i, Body=b"x" * MiB)["ETag"]
          for i in (1, 2)]
    row("boto3", "CompleteMultipartUpload with a 1 MiB first part", "EntityTooSmall",
        code(lambda: s3.complete_multipart_upload(
            Bucket=B, Key="small.bin", UploadId=small,
            MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(se, 1)]})))
    row("boto3", "AbortMultipartUpload", "ok",
        code(lambda: s3.abort_multipart_upload(Bucket=B, Key="small.bin", UploadId=small)))
    row("boto3", "UploadPart after abort", "NoSuchUpload",
        code(lambda: s3.upload_part(Bucket=B, Key="small.bin", UploadId=small, PartNumber=3, Body=b"x")))
    row("boto3", "HeadObject of the aborted upload's key", "404",
        code(lambda: s3.head_object(Bucket=B, Key="small.bin")))

    # A managed transfer: parallel parts, then a parallel ranged download.
    big = os.path.join(work, "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(a.big_mib * MiB))
    tc = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4)
    s3.upload_file(big, B, "big.bin", Config=tc)
    back = os.path.join(work, "big.back")
    s3.download_file(B, "big.bin", back, Config=tc)
    row("boto3", f"upload_file/download_file {a.big_mib} MiB in 8 MiB parts",
        True, open(big, "rb").read() == open(back, "rb").read())

    # Authentication.
    row("boto3", "a wrong secret", "SignatureDoesNotMatch",
        code(lambda: client(sk="wrong" * 8).list_buckets()))
    row("boto3", "an unknown access key", "InvalidAccessKeyId",
        code(lambda: client(ak="NOBODY").list_buckets()))
    url = s3.generate_presigned_url("get_object", Params={"Bucket": B, "Key": "docs/a.bin"}, ExpiresIn=300)
    row("http", "a presigned GET", True, urllib.request.urlopen(url).read() == data)
    bad = url.replace("Signature=", "Signature=0")
    try:
        urllib.request.urlopen(bad)
        status = 200
    except urllib.error.HTTPError as e:
        status = e.code
    row("http", "a presigned GET with its signature altered", 403, status)
    try:
        urllib.request.urlopen(a.endpoint + "/" + B + "/docs/a.bin")
        status = 200
    except urllib.error.HTTPError as e:
        status = e.code
    row("http", "an unsigned GET", 403, status)

    # Lifecycle: a rule with a date in the past expires what it covers at the next sweep
    # (the test runs the gateway with lifecycle_every_secs = 1).
    import datetime
    import time
    s3.put_object(Bucket=B, Key="old/a", Body=b"a")
    s3.put_object(Bucket=B, Key="keep/b", Body=b"b")
    row("boto3", "GetBucketLifecycleConfiguration with none set", "NoSuchLifecycleConfiguration",
        code(lambda: s3.get_bucket_lifecycle_configuration(Bucket=B)))
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    rules = [{"ID": "old", "Status": "Enabled", "Filter": {"Prefix": "old/"}, "Expiration": {"Date": past}},
             {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}]
    row("boto3", "PutBucketLifecycleConfiguration", "ok",
        code(lambda: s3.put_bucket_lifecycle_configuration(Bucket=B, LifecycleConfiguration={"Rules": rules})))
    got = s3.get_bucket_lifecycle_configuration(Bucket=B)["Rules"]
    row("boto3", "GetBucketLifecycleConfiguration", [("old", "old/", None), ("logs", "logs/", 30)],
        [(r["ID"], r["Filter"]["Prefix"], r["Expiration"].get("Days")) for r in got])
    tagged = [{"ID": "t", "Status": "Enabled", "Filter": {"Tag": {"Key": "k", "Value": "v"}},
               "Expiration": {"Days": 1}}]
    row("boto3", "a lifecycle rule by tag", "NotImplemented",
        code(lambda: s3.put_bucket_lifecycle_configuration(Bucket=B, LifecycleConfiguration={"Rules": tagged})))
    deadline = time.monotonic() + 30
    while code(lambda: s3.head_object(Bucket=B, Key="old/a")) != "404" and time.monotonic() < deadline:
        time.sleep(0.2)
    row("boto3", "an object past its lifecycle date is gone", "404",
        code(lambda: s3.head_object(Bucket=B, Key="old/a")))
    row("boto3", "an object no rule covers stays", "ok", code(lambda: s3.head_object(Bucket=B, Key="keep/b")))
    row("boto3", "DeleteBucketLifecycle", "ok", code(lambda: s3.delete_bucket_lifecycle(Bucket=B)))
    row("boto3", "GetBucketLifecycleConfiguration after deleting it", "NoSuchLifecycleConfiguration",
        code(lambda: s3.get_bucket_lifecycle_configuration(Bucket=B)))
    s3.delete_object(Bucket=B, Key="keep/b")

    # Versioning: every write kept, a delete marker in front, versions read, listed and
    # removed one by one.
    V = "versioned"
    s3.create_bucket(Bucket=V)
    row("boto3", "GetBucketVersioning never enabled", None,
        s3.get_bucket_versioning(Bucket=V).get("Status"))
    s3.put_object(Bucket=V, Key="k", Body=b"before")
    row("boto3", "PutBucketVersioning Enabled", "ok",
        code(lambda: s3.put_bucket_versioning(Bucket=V, VersioningConfiguration={"Status": "Enabled"})))
    row("boto3", "GetBucketVersioning", "Enabled", s3.get_bucket_versioning(Bucket=V).get("Status"))
    row("boto3", "PutBucketVersioning of a missing bucket", "NoSuchBucket",
        code(lambda: s3.put_bucket_versioning(Bucket="missing",
                                              VersioningConfiguration={"Status": "Enabled"})))
    v1 = s3.put_object(Bucket=V, Key="k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=V, Key="k", Body=b"two")["VersionId"]
    row("boto3", "PutObject gives each write its version id", True, v1 != v2 and "null" not in (v1, v2))
    row("boto3", "GetObject is the newest", (b"two", v2),
        (lambda g: (g["Body"].read(), g["VersionId"]))(s3.get_object(Bucket=V, Key="k")))
    row("boto3", "GetObject VersionId", b"one", s3.get_object(Bucket=V, Key="k", VersionId=v1)["Body"].read())
    row("boto3", "GetObject VersionId null (written before)", b"before",
        s3.get_object(Bucket=V, Key="k", VersionId="null")["Body"].read())
    row("boto3", "HeadObject VersionId", 3, s3.head_object(Bucket=V, Key="k", VersionId=v1)["ContentLength"])
    row("boto3", "GetObject unknown VersionId", "NoSuchVersion",
        code(lambda: s3.get_object(Bucket=V, Key="k", VersionId="00000000000fffff")))
    row("boto3", "GetObject malformed VersionId", "InvalidArgument",
        code(lambda: s3.get_object(Bucket=V, Key="k", VersionId="x")))
    d = s3.delete_object(Bucket=V, Key="k")
    marker = d.get("VersionId")
    row("boto3", "DeleteObject makes a delete marker", True, d.get("DeleteMarker") is True and bool(marker))
    row("boto3", "GetObject behind a delete marker", "NoSuchKey", code(lambda: s3.get_object(Bucket=V, Key="k")))
    row("boto3", "GetObject of the delete marker's version", "MethodNotAllowed",
        code(lambda: s3.get_object(Bucket=V, Key="k", VersionId=marker)))
    row("boto3", "ListObjectsV2 hides a deleted key", 0, s3.list_objects_v2(Bucket=V).get("KeyCount"))
    row("boto3", "GetObject an old version behind the marker", b"two",
        s3.get_object(Bucket=V, Key="k", VersionId=v2)["Body"].read())
    lv = s3.list_object_versions(Bucket=V)
    row("boto3", "ListObjectVersions: versions newest first", [(v2, False), (v1, False), ("null", False)],
        [(x["VersionId"], x["IsLatest"]) for x in lv.get("Versions", [])])
    row("boto3", "ListObjectVersions: the delete marker is latest", [(marker, True)],
        [(x["VersionId"], x["IsLatest"]) for x in lv.get("DeleteMarkers", [])])
    p1 = s3.list_object_versions(Bucket=V, MaxKeys=2)
    p2 = s3.list_object_versions(Bucket=V, MaxKeys=2, KeyMarker=p1["NextKeyMarker"],
                                 VersionIdMarker=p1["NextVersionIdMarker"])
    paged = [x["VersionId"] for p in (p1, p2) for x in p.get("DeleteMarkers", []) + p.get("Versions", [])]
    row("boto3", "ListObjectVersions in pages of 2", sorted([marker, v2, v1, "null"]), sorted(paged))
    row("boto3", "ListObjectVersions: page 1 truncated, page 2 not", (True, False),
        (p1["IsTruncated"], p2["IsTruncated"]))
    row("boto3", "DeleteObject of the delete marker's version", "ok",
        code(lambda: s3.delete_object(Bucket=V, Key="k", VersionId=marker)))
    row("boto3", "GetObject after removing the marker", b"two", s3.get_object(Bucket=V, Key="k")["Body"].read())
    row("boto3", "DeleteObject VersionId of the current version", v2,
        s3.delete_object(Bucket=V, Key="k", VersionId=v2).get("VersionId"))
    row("boto3", "GetObject: the next newest became current", b"one",
        s3.get_object(Bucket=V, Key="k")["Body"].read())
    c = s3.copy_object(Bucket=V, Key="copied", CopySource={"Bucket": V, "Key": "k", "VersionId": "null"})
    row("boto3", "CopyObject of a version", ("null", b"before"),
        (c.get("CopySourceVersionId", "null"), s3.get_object(Bucket=V, Key="copied")["Body"].read()))
    restored = s3.copy_object(Bucket=V, Key="k", CopySource={"Bucket": V, "Key": "k", "VersionId": "null"})
    v3 = restored.get("VersionId")
    row("boto3", "CopyObject of an older version onto its key restores it", (True, b"before"),
        (v3 not in (None, "null", v1, v2), s3.get_object(Bucket=V, Key="k")["Body"].read()))
    row("boto3", "PutBucketVersioning Suspended", "ok",
        code(lambda: s3.put_bucket_versioning(Bucket=V, VersioningConfiguration={"Status": "Suspended"})))
    s3.put_object(Bucket=V, Key="k", Body=b"three")
    ids = [x["VersionId"] for x in s3.list_object_versions(Bucket=V, Prefix="k")["Versions"]]
    row("boto3", "while suspended a write replaces the null version", ["null", v3, v1], ids)
    everything = s3.list_object_versions(Bucket=V)
    gone = [{"Key": x["Key"], "VersionId": x["VersionId"]}
            for x in everything.get("Versions", []) + everything.get("DeleteMarkers", [])]
    d = s3.delete_objects(Bucket=V, Delete={"Objects": gone})
    row("boto3", "DeleteObjects by version", len(gone), len(d.get("Deleted", [])))
    row("boto3", "DeleteBucket once every version is gone", "ok", code(lambda: s3.delete_bucket(Bucket=V)))

    # Deleting.
    row("boto3", "DeleteObject", "ok", code(lambda: s3.delete_object(Bucket=B, Key="copy.bin")))
    row("boto3", "HeadObject after DeleteObject", "404",
        code(lambda: s3.head_object(Bucket=B, Key="copy.bin")))
    row("boto3", "GetObject of the source after deleting its copy", True,
        s3.get_object(Bucket=B, Key="docs/a.bin")["Body"].read() == data)
    row("boto3", "DeleteObject of a missing key", "ok", code(lambda: s3.delete_object(Bucket=B, Key="nope")))
    d = s3.delete_objects(Bucket=L, Delete={"Objects": [{"Key": k} for k in keys]})
    row("boto3", "DeleteObjects", sorted(keys), sorted(x["Key"] for x in d.get("Deleted", [])))
    row("boto3", "DeleteBucket emptied", "ok", code(lambda: s3.delete_bucket(Bucket=L)))
    row("boto3", "DeleteBucket not empty", "BucketNotEmpty", code(lambda: s3.delete_bucket(Bucket=B)))

    # The AWS CLI: multipart upload above its 8 MB threshold, listing, download, removal.
    aws = os.path.join(os.path.dirname(sys.executable), "aws")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=a.access_key, AWS_SECRET_ACCESS_KEY=secret,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null")

    def cli(*args):
        p = subprocess.run([aws, "--endpoint-url", a.endpoint, *args], env=env,
                           capture_output=True, text=True, timeout=600)
        return p.returncode, p.stdout, p.stderr

    rc, _, err = cli("s3", "cp", big, f"s3://{B}/cli/big.bin")
    row("aws", "s3 cp FILE s3://... (multipart)", 0, rc if rc == 0 else f"{rc}: {err.strip()[-200:]}")
    rc, out, _ = cli("s3", "ls", f"s3://{B}/cli/")
    row("aws", "s3 ls", True, rc == 0 and "big.bin" in out and str(a.big_mib * MiB) in out)
    back2 = os.path.join(work, "cli.back")
    rc, _, err = cli("s3", "cp", f"s3://{B}/cli/big.bin", back2)
    row("aws", "s3 cp s3://... FILE: byte-identical", True,
        rc == 0 and open(big, "rb").read() == open(back2, "rb").read())
    rc, _, _ = cli("s3", "rm", f"s3://{B}/cli/big.bin")
    rc2, _, _ = cli("s3api", "head-object", "--bucket", B, "--key", "cli/big.bin")
    row("aws", "s3 rm, then head-object fails", (0, True), (rc, rc2 != 0))

    # rclone: copy a folder, check it by size and MD5 (against the ETags), read one back.
    rclone = shutil.which("rclone")
    if rclone is None:
        row("rclone", "rclone on PATH", True, False)
    else:
        src = os.path.join(work, "tree")
        os.makedirs(os.path.join(src, "sub"), exist_ok=True)
        files = {"one.txt": b"one\n", "sub/two.bin": os.urandom(70_000), "sub/three.bin": os.urandom(3)}
        for n, d in files.items():
            with open(os.path.join(src, n), "wb") as f:
                f.write(d)
        renv = dict(os.environ, RCLONE_CONFIG="/dev/null", RCLONE_CONFIG_GW_TYPE="s3",
                    RCLONE_CONFIG_GW_PROVIDER="Other", RCLONE_CONFIG_GW_ENDPOINT=a.endpoint,
                    RCLONE_CONFIG_GW_ACCESS_KEY_ID=a.access_key,
                    RCLONE_CONFIG_GW_SECRET_ACCESS_KEY=secret, RCLONE_CONFIG_GW_REGION="us-east-1",
                    RCLONE_CONFIG_GW_FORCE_PATH_STYLE="true")
        # rclone 1.60 cannot load a CA bundle into its plain-HTTP transport, and fails.
        renv.pop("AWS_CA_BUNDLE", None)

        def rc_(*args):
            p = subprocess.run([rclone, *args], env=renv, capture_output=True, text=True, timeout=600)
            return p.returncode, p.stdout, p.stderr

        rc, _, err = rc_("copy", src, f"gw:{B}/tree")
        row("rclone", "copy DIR gw:bucket/tree", 0, rc if rc == 0 else f"{rc}: {err.strip()[-200:]}")
        rc, _, err = rc_("check", src, f"gw:{B}/tree")
        row("rclone", "check (sizes and MD5s)", 0, rc if rc == 0 else f"{rc}: {err.strip()[-200:]}")
        rc, out, _ = rc_("lsf", "-R", f"gw:{B}/tree")
        row("rclone", "lsf -R", sorted(["one.txt", "sub/", "sub/three.bin", "sub/two.bin"]),
            sorted(out.split()))
        p = subprocess.run([rclone, "cat", f"gw:{B}/tree/sub/two.bin"], env=renv, capture_output=True, timeout=600)
        row("rclone", "cat: bytes", True, p.returncode == 0 and p.stdout == files["sub/two.bin"])
        rc, _, _ = rc_("purge", f"gw:{B}/tree")
        rc2, out, _ = rc_("lsf", f"gw:{B}/tree")
        row("rclone", "purge", (0, ""), (rc, out.strip()))

    bad = [r for r in ROWS if not r[4]]
    print(f"{len(ROWS)} checks, {len(bad)} differ from S3")
    sys.exit(1 if bad else 0)


def seeded(seed, n):
    import random
    return random.Random(seed).randbytes(n)


def deals(a, s3):
    """A gateway storing as deals: deal-put stores an object and a multipart one, deal-get
    reads them back (after the caller killed one of the hosts)."""
    MiB = 1 << 20
    B = "dealt"
    small, big = seeded(4, 300_001), seeded(5, 11 * MiB)
    if a.phase == "deal-put":
        row("boto3", "CreateBucket", "ok", code(lambda: s3.create_bucket(Bucket=B)))
        row("boto3", "PutObject as deals", "ok",
            code(lambda: s3.put_object(Bucket=B, Key="small", Body=small)))
        uid = s3.create_multipart_upload(Bucket=B, Key="big")["UploadId"]
        parts = []
        for n, at in enumerate(range(0, len(big), 5 * MiB), 1):
            e = s3.upload_part(Bucket=B, Key="big", UploadId=uid, PartNumber=n,
                               Body=big[at:at + 5 * MiB])["ETag"]
            parts.append({"PartNumber": n, "ETag": e})
        row("boto3", "CompleteMultipartUpload as deals", "ok",
            code(lambda: s3.complete_multipart_upload(Bucket=B, Key="big", UploadId=uid,
                                                      MultipartUpload={"Parts": parts})))
    else:
        row("boto3", "GetObject of a dealt object", True,
            s3.get_object(Bucket=B, Key="small")["Body"].read() == small)
        row("boto3", "ranged GetObject of a dealt object", small[1000:2000],
            s3.get_object(Bucket=B, Key="small", Range="bytes=1000-1999")["Body"].read())
        row("boto3", "GetObject of a dealt multipart object", True,
            s3.get_object(Bucket=B, Key="big")["Body"].read() == big)
    bad = [r for r in ROWS if not r[4]]
    print(f"{len(ROWS)} checks, {len(bad)} differ from S3")
    sys.exit(1 if bad else 0)


def drops(a, s3):
    """Deleting frees the host: drop-put stores an object and a copy of it (one sealed
    file, named twice), and a multipart object whose first part was uploaded twice, then
    aborts another upload; drop-delete-a deletes the object and the multipart one,
    drop-delete-b the copy; the caller counts the host's chunks in between."""
    B = "dropped"
    MiB = 1 << 20
    if a.phase == "drop-put":
        row("boto3", "CreateBucket", "ok", code(lambda: s3.create_bucket(Bucket=B)))
        row("boto3", "PutObject", "ok", code(lambda: s3.put_object(Bucket=B, Key="a", Body=seeded(6, 20 << 20))))
        row("boto3", "CopyObject", "ok",
            code(lambda: s3.copy_object(Bucket=B, Key="b", CopySource={"Bucket": B, "Key": "a"})))
        uid = s3.create_multipart_upload(Bucket=B, Key="m")["UploadId"]
        s3.upload_part(Bucket=B, Key="m", UploadId=uid, PartNumber=1, Body=seeded(7, 5 * MiB))
        e1 = s3.upload_part(Bucket=B, Key="m", UploadId=uid, PartNumber=1, Body=seeded(8, 5 * MiB))["ETag"]
        e2 = s3.upload_part(Bucket=B, Key="m", UploadId=uid, PartNumber=2, Body=b"tail")["ETag"]
        row("boto3", "CompleteMultipartUpload after part 1 was uploaded again", "ok",
            code(lambda: s3.complete_multipart_upload(Bucket=B, Key="m", UploadId=uid, MultipartUpload={
                "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})))
        row("boto3", "GetObject of it: the second upload of part 1", True,
            s3.get_object(Bucket=B, Key="m")["Body"].read() == seeded(8, 5 * MiB) + b"tail")
        gone = s3.create_multipart_upload(Bucket=B, Key="gone")["UploadId"]
        s3.upload_part(Bucket=B, Key="gone", UploadId=gone, PartNumber=1, Body=seeded(9, 5 * MiB))
        row("boto3", "AbortMultipartUpload of an upload with a part", "ok",
            code(lambda: s3.abort_multipart_upload(Bucket=B, Key="gone", UploadId=gone)))
    elif a.phase == "drop-delete-a":
        row("boto3", "DeleteObject a", "ok", code(lambda: s3.delete_object(Bucket=B, Key="a")))
        row("boto3", "DeleteObject m", "ok", code(lambda: s3.delete_object(Bucket=B, Key="m")))
        row("boto3", "GetObject b: the copy still reads", True,
            s3.get_object(Bucket=B, Key="b")["Body"].read() == seeded(6, 20 << 20))
    else:
        row("boto3", "DeleteObject b", "ok", code(lambda: s3.delete_object(Bucket=B, Key="b")))
        row("boto3", "DeleteBucket", "ok", code(lambda: s3.delete_bucket(Bucket=B)))
    bad = [r for r in ROWS if not r[4]]
    print(f"{len(ROWS)} checks, {len(bad)} differ from S3")
    sys.exit(1 if bad else 0)


def crash(a, s3):
    import http.client
    import urllib.parse
    MiB = 1 << 20
    B = "crash"
    if a.phase == "crash-before":
        s3.create_bucket(Bucket=B)
        s3.put_object(Bucket=B, Key="kept", Body=seeded(1, MiB))
        uid = s3.create_multipart_upload(Bucket=B, Key="parted")["UploadId"]
        s3.upload_part(Bucket=B, Key="parted", UploadId=uid, PartNumber=1, Body=seeded(2, 5 * MiB))
        print("UPLOAD", uid, flush=True)
        url = urllib.parse.urlsplit(s3.generate_presigned_url(
            "put_object", Params={"Bucket": B, "Key": "torn"}, ExpiresIn=600))
        conn = http.client.HTTPConnection(url.hostname, url.port)
        conn.putrequest("PUT", url.path + "?" + url.query)
        conn.putheader("Content-Length", str(8 * MiB))
        conn.endheaders()
        conn.send(seeded(3, 4 * MiB))
        print("MID-PUT", flush=True)
        sys.stdin.read()
        return
    row("boto3", "the object stored before the kill", True,
        s3.get_object(Bucket=B, Key="kept")["Body"].read() == seeded(1, MiB))
    row("boto3", "the PUT torn by the kill", "404", code(lambda: s3.head_object(Bucket=B, Key="torn")))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=B).get("Contents", [])]
    row("boto3", "the listing after the kill", ["kept"], keys)
    parts = s3.list_parts(Bucket=B, Key="parted", UploadId=a.upload).get("Parts", [])
    row("boto3", "the part uploaded before the kill", [(1, 5 * MiB)], [(p["PartNumber"], p["Size"]) for p in parts])
    e2 = s3.upload_part(Bucket=B, Key="parted", UploadId=a.upload, PartNumber=2, Body=b"tail")["ETag"]
    s3.complete_multipart_upload(Bucket=B, Key="parted", UploadId=a.upload, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": parts[0]["ETag"]}, {"PartNumber": 2, "ETag": e2}]})
    row("boto3", "the upload completed after the kill", True,
        s3.get_object(Bucket=B, Key="parted")["Body"].read() == seeded(2, 5 * MiB) + b"tail")
    bad = [r for r in ROWS if not r[4]]
    print(f"{len(ROWS)} checks, {len(bad)} differ from S3")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
