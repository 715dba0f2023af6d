"""Run gcp-storage-emulator with its multipart upload parser made byte-exact and GCS's
``ifGenerationMatch`` preconditions honoured.

- The emulator parses ``multipart/related`` uploads with Python's email parser, which drops a final
  ``\\r`` of the object (about one small object in 256 comes back a byte short). Here the parts are
  split on the boundary bytes instead.
- Its insert and delete handlers never read ``ifGenerationMatch``, so a create-if-absent
  (``ifGenerationMatch=0``) overwrites and a replace of a gone generation succeeds. Here both are checked
  as GCS checks them (412 Precondition Failed); the server handles one request at a time, so the check
  and the write are atomic, as on GCS. The exclusive run lock (:mod:`imgtools.sinks.lock`) rests on it.
- The listen queue is made deep enough for a concurrent client.

Usage: ``python -m imgtools.testing._gcs_emulator PORT``.
"""

from __future__ import annotations

import json
import re
import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _multipart_related(raw: bytes, content_type: str) -> dict:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    # a delimiter is a line break then --boundary; gcsfs breaks lines with \n, other clients with \r\n
    crlf = raw.startswith(b"--" + boundary + b"\r\n")
    newline = b"\r\n" if crlf else b"\n"
    parts = (newline + raw).split(newline + b"--" + boundary)[1:-1]
    out = []
    for part in parts:
        head, _, body = part[len(newline):].partition(newline + newline)
        ctype = "application/octet-stream"
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                ctype = value.strip()
        out.append((ctype, body))
    return {"meta": json.loads(out[0][1]), "content": out[1][1], "content-type": out[1][0]}


_original = server._read_data


def _read_data(request_handler, query):
    content_type = request_handler.headers.get("Content-Type") or ""
    if not content_type.startswith("multipart/related"):
        return _original(request_handler, query)
    raw = server._decode_raw_data(server._read_raw_data(request_handler), request_handler)
    return _multipart_related(raw, content_type) if raw else None


def _generation(storage, bucket: str, name: str) -> str | None:
    try:
        return storage.get_file_obj(bucket, name)["generation"]
    except NotFound:
        return None


def _checked(handler, name_of):
    """``handler`` answering 412 when ``ifGenerationMatch`` is given and the object's generation differs
    (``0``: the object exists)."""

    def checked(request, response, storage, *args, **kwargs):
        want = request.query.get("ifGenerationMatch")
        if want:
            current = _generation(storage, request.params["bucket_name"], name_of(request))
            if (current is not None) if want[0] == "0" else (current != want[0]):
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
        return handler(request, response, storage, *args, **kwargs)

    return checked


def _upload_name(request) -> str | None:
    return request.query["name"][0] if "name" in request.query else request.data["meta"].get("name")


def _honour_generation_preconditions() -> None:
    """Route the emulator's object insert and delete through :func:`_checked`."""
    patched = {objects.insert: _checked(objects.insert, _upload_name),
               objects.delete: _checked(objects.delete, lambda request: request.params["object_id"])}
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler in patched:
                handlers[method] = patched[handler]
    objects.insert, objects.delete = patched[objects.insert], patched[objects.delete]


def main(port: int) -> None:
    import logging

    logging.disable(logging.WARNING)
    server._read_data = _read_data
    _honour_generation_preconditions()
    # one thread serves every request; a deeper listen queue keeps concurrent clients waiting in
    # line instead of having their connections refused and retried a second later
    server.server.HTTPServer.request_queue_size = 256
    server.create_server("127.0.0.1", port, in_memory=True).run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
