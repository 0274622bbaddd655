"""An S3 server on the loopback interface (moto's), for tests of ``s3://`` inputs and outputs.

`S3` starts moto's server on a free port in a background thread; its ``env`` is what a process
needs to reach it through the real clients (s3fs, boto3): ``AWS_ENDPOINT_URL`` and a test
credential, with the instance-metadata lookup turned off so that a missing credential fails at
once. `upload` puts a local directory under a prefix, as a user's ``aws s3 sync`` would.
"""

from __future__ import annotations

import os
from pathlib import Path


class S3:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def __enter__(self) -> S3:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_CONFIG_FILE": os.devnull,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def upload(self, directory: Path, bucket: str, prefix: str) -> None:
        client = self.client()
        for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``, by its key relative to it, with its bytes."""
        client, found = self.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                found[item["Key"][len(prefix) :].lstrip("/")] = body
        return found
