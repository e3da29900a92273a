"""Where sealed files go: an S3 bucket (through s3fs) or a local folder, behind one small interface.

``put`` writes a file under a key, ``size`` tells the size of the object the target holds (None when
there is none). Archive verifies with ``size`` before it deletes anything local.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import fsspec.asyn


class LocalTarget:
    def __init__(self, root: str):
        self.root = Path(root)
        self.description = f"folder {self.root}"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, local: Path, key: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(target.name + ".tmp")
        shutil.copyfile(local, temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)

    def size(self, key: str) -> int | None:
        try:
            return (self.root / key).stat().st_size
        except FileNotFoundError:
            return None


class S3Target:
    def __init__(self, bucket: str, region: str, endpoint_url: str = ""):
        import s3fs

        self.bucket, self.region = bucket, region
        client_kwargs = {"region_name": region}
        if endpoint_url:
            client_kwargs["endpoint_url"] = endpoint_url
        # retries are archive's own (1, 2, 4, 8, 16 s); one attempt per call here, and bounded waits
        self.fs = s3fs.S3FileSystem(
            client_kwargs=client_kwargs,
            config_kwargs={"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 1}},
            skip_instance_cache=True,
        )
        self.description = f"s3://{bucket}" + (f" at {endpoint_url}" if endpoint_url else "")

    def prepare(self) -> None:
        """Creates the bucket if it is missing, in the configured region (us-east-1 takes no constraint)."""
        if self.fs.exists(self.bucket):
            return
        params = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        fsspec.asyn.sync(self.fs.loop, self.fs._call_s3, "create_bucket", **params)
        self.fs.invalidate_cache()

    def put(self, local: Path, key: str) -> None:
        self.fs.put_file(str(local), f"{self.bucket}/{key}")

    def size(self, key: str) -> int | None:
        path = f"{self.bucket}/{key}"
        self.fs.invalidate_cache(path)
        try:
            return self.fs.info(path)["size"]
        except FileNotFoundError:
            return None


def from_config(bucket: str, archive_url: str, region: str, endpoint_url: str) -> LocalTarget | S3Target:
    return S3Target(bucket, region, endpoint_url) if bucket else LocalTarget(archive_url)
