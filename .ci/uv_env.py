"""pip's index settings as uv's environment variables, for `make` and the portable-model test.

uv installs the same set as pip several times faster, but it does not read pip's configuration
(pip.conf, PIP_* variables): a machine whose pip points at local mirrors, find-links or constraints
would otherwise get another resolution from uv. ``python .ci/uv_env.py`` prints ``export K=V`` lines
for a shell; :func:`uv_env` returns them as a dict. A UV_* variable already set wins. Versions are
chosen over all indexes together (``unsafe-best-match``), as pip does.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

KEYS = (("index-url", "UV_INDEX_URL", " "), ("extra-index-url", "UV_EXTRA_INDEX_URL", " "),
        ("find-links", "UV_FIND_LINKS", ","), ("constraint", "UV_CONSTRAINT", " "), ("cert", "SSL_CERT_FILE", " "))


def uv_env(python: str = sys.executable) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    conf: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        conf.setdefault(key.rsplit(".", 1)[-1], value.strip().strip("'\""))
    env = {"UV_INDEX_STRATEGY": "unsafe-best-match"}
    for pip_key, uv_key, sep in KEYS:
        value = os.environ.get("PIP_" + pip_key.upper().replace("-", "_")) or conf.get(pip_key)
        if value:
            env[uv_key] = sep.join(value.split())
    return {k: v for k, v in env.items() if k not in os.environ}


if __name__ == "__main__":
    print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in uv_env().items()))
