"""How long moto's S3 server takes to serve one page of a listing, alone and 20 at once, as its bucket grows
(issue 14's listing figure): the floor under any client's listing of that bucket. moto runs in this process
(filled through its backend, as ``benchmarks.buckets`` does); the pages go over HTTP without the latency
proxy. Prints one line per bucket size. Not a test: nothing is asserted.

    python -m benchmarks.moto_pages
"""

from __future__ import annotations

import concurrent.futures
import logging
import time


def main() -> None:
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    from imgtools.testing import free_port
    from imgtools.testing.servers import S3_REGION

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name=S3_REGION)
        where = {} if S3_REGION == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": S3_REGION}}
        s3.create_bucket(Bucket="many", **where)
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

        def page(prefix: int) -> tuple[float, int]:
            t = time.perf_counter()
            found = s3.list_objects_v2(Bucket="many", Prefix=f"k/{prefix:03d}/", MaxKeys=1000)
            return time.perf_counter() - t, found["KeyCount"]

        for keys in (20_000, 200_000):
            for i in range(len(backend.buckets["many"].keys), keys):  # 20 prefixes, as benchmarks.buckets
                backend.put_object("many", f"k/{i % 20:03d}/{i:07d}.jpg", b"x")
            alone = [page(0) for _ in range(3)]
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(20) as pool:
                list(pool.map(page, range(20)))
            wall = time.perf_counter() - t
            print(f"{keys:,} keys in the bucket: one page of {alone[0][1]} keys "
                  f"{min(s for s, _ in alone):.3f}-{max(s for s, _ in alone):.3f} s; 20 pages at once "
                  f"{wall:.2f} s ({wall / 20:.3f} s a page)", flush=True)
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
