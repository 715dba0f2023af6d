"""Real storage servers on 127.0.0.1 for tests, benchmarks and offline notebooks.

:func:`gcs_emulator` runs gcp-storage-emulator (``gs://``), :func:`s3_server` runs moto's S3 server
(``s3://``), and :class:`Proxy` sits in front of either to add latency or faults. They need the test
extra: ``pip install imgtools[test]``.

Examples
--------
>>> from imgtools.testing import gcs_emulator          # doctest: +SKIP
>>> with gcs_emulator() as server:                     # doctest: +SKIP
...     fs = server.filesystem(); fs.mkdir("bucket")
"""

from __future__ import annotations

from .proxy import Proxy
from .servers import Server, free_port, gcs_emulator, s3_server

__all__ = ["Server", "gcs_emulator", "s3_server", "Proxy", "free_port"]
