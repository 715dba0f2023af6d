"""Reading many small objects from a bucket with real per-request latency: concurrent against
one-at-a-time, in the same run; and listing a prefix of many keys under ``--prefixes`` sub-prefixes, one
``fs.find`` against imgtools' listing (split into sub-prefixes listed side by side), in the same run.

    python -m benchmarks.buckets --data ../shared/datasets/imagenet-sample [--latency 0.02 0.05] [--keys 200000]
        [--prefixes 20]

moto's S3 server (threaded) runs on 127.0.0.1 behind imgtools.testing.Proxy, which adds a uniform
20-50 ms to every request, like a bucket in another zone. The objects are uploaded straight to the
server; every timed read and listing goes through the proxy. Prints a table.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import pandas as pd

from imgtools.sources import list_source, read_bytes
from imgtools.testing import Proxy, s3_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/imagenet-sample", help="folder of JPEGs")
    parser.add_argument("--latency", type=float, nargs=2, default=(0.02, 0.05), metavar=("MIN", "MAX"))
    parser.add_argument("--keys", type=int, default=200_000, help="keys to list (tiny objects)")
    parser.add_argument("--prefixes", type=int, default=20, help="sub-prefixes the keys are spread over")
    parser.add_argument("--chunk", type=int, default=256, help="images per batched read (one chunk of a task)")
    parser.add_argument("--listing-only", action="store_true", help="only the listing comparison")
    args = parser.parse_args()
    if args.listing_only:
        _print_listing(_listing(args.keys, args.prefixes, tuple(args.latency)), args)
        return

    files = sorted(p for p in pathlib.Path(args.data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    with s3_server() as server:
        fs = server.filesystem()
        server.make_bucket("bench")
        blobs = {f"bench/images/{p.relative_to(args.data).as_posix()}": p.read_bytes() for p in files}
        fs.pipe(blobs)
        urls = [f"s3://{key}" for key in blobs]
        total_mb = sum(map(len, blobs.values())) / 2**20
        rows = []
        with Proxy(server.endpoint, latency=tuple(args.latency)) as proxy:
            options = server.options(proxy.endpoint)
            remote = server.filesystem(proxy.endpoint)

            t = time.perf_counter()
            serial = [remote.cat_file(url.split("://", 1)[1]) for url in urls]
            one_at_a_time = time.perf_counter() - t
            rows.append(("one at a time (fs.cat_file in a loop)", len(urls), one_at_a_time))

            t = time.perf_counter()
            got = []
            for start in range(0, len(urls), args.chunk):
                got += read_bytes(urls[start : start + args.chunk], options)
            concurrent = time.perf_counter() - t
            rows.append((f"imgtools read_bytes, batches of {args.chunk}", len(urls), concurrent))
            assert got == serial == list(blobs.values()), "the two paths read different bytes"
    listing = _listing(args.keys, args.prefixes, tuple(args.latency))
    table = pd.DataFrame(rows, columns=["read", "objects", "seconds"])
    table["objects/s"] = (table["objects"] / table["seconds"]).round(0)
    table["MiB/s"] = (total_mb / table["seconds"]).round(1)
    table["speed-up"] = (table["seconds"].iloc[0] / table["seconds"]).round(1)
    print(f"{len(urls)} JPEGs ({total_mb:.1f} MiB) from moto S3 on 127.0.0.1 behind a proxy adding "
          f"{args.latency[0] * 1000:.0f}-{args.latency[1] * 1000:.0f} ms per request")
    print(table.to_string(index=False))
    _print_listing(listing, args)


def _print_listing(listing: list[tuple[str, int, float, int]], args: argparse.Namespace) -> None:
    print(f"listing {args.keys} keys under {args.prefixes} sub-prefixes of one prefix (through the same proxy):")
    print(pd.DataFrame(listing, columns=["listing", "keys", "seconds", "requests"]).assign(
        **{"speed-up": lambda t: (t["seconds"].iloc[0] / t["seconds"]).round(1)}).to_string(index=False))


def _listing(keys: int, prefixes: int, latency: tuple[float, float]) -> list[tuple[str, int, float, int]]:
    """List ``keys`` tiny objects under ``prefixes`` sub-prefixes, with one ``fs.find`` and with
    :func:`list_source`: moto runs in this process here, so that the bucket can be filled through its
    backend in seconds (100,000 PUTs over HTTP take many minutes); the listings go over HTTP through the
    latency proxy."""
    import logging

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    from imgtools.testing import free_port
    from imgtools.testing.servers import S3_REGION

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                   "client_kwargs": {"region_name": S3_REGION}}
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True, **options).mkdir("many", region_name=S3_REGION)
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for i in range(keys):
            backend.put_object("many", f"k/{i % prefixes:03d}/{i:07d}.jpg", b"x")
        rows = []
        for name in ("one fs.find of the prefix", "imgtools list_source (split, side by side)"):
            with Proxy(endpoint, latency=latency) as proxy:
                proxied = {**options, "endpoint_url": proxy.endpoint}
                t = time.perf_counter()
                if name.startswith("one"):
                    found = len(fsspec.filesystem("s3", skip_instance_cache=True, **proxied).find("many/k"))
                else:
                    found = len(list_source("s3://many/k", storage_options=proxied))
                rows.append((name, found, time.perf_counter() - t, sum(proxy.counts.values())))
        return rows
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
