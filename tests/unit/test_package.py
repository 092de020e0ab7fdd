"""Importing ipyllm is fast and lazy; the stub server runs as ``python -m ipyllm.testing``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from ipyllm.testing import script_remote


def test_import_is_fast_and_does_not_import_litellm_pandas_or_ipython() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import ipyllm; elapsed = time.perf_counter() - t; "
        "print(elapsed, 'litellm' in sys.modules, 'pandas' in sys.modules, 'IPython' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    elapsed, litellm, pandas, ipython = float(out[0]), *out[1:]
    assert (litellm, pandas, ipython) == ("False", "False", "False")
    assert elapsed < 1.0


def test_the_stub_server_runs_from_the_command_line() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "ipyllm.testing", "--fault", "503"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("ipyllm stub server on http://127.0.0.1:")
        base_url = first.split()[-1]
        request = urllib.request.Request(
            f"{base_url}/chat/completions",
            data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError("the scripted 503 should have come first")
        except urllib.error.HTTPError as error:
            assert error.code == 503
        script_remote(base_url, "429:2")
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError("the remotely scripted 429 should have come next")
        except urllib.error.HTTPError as error:
            assert error.code == 429 and error.headers["Retry-After"] == "2"
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["choices"][0]["message"]["content"] == "[gpt-4o-mini] hi"
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
            assert "gpt-4o-mini" in [m["id"] for m in json.load(response)["data"]]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_load_ext_returns_fast_and_litellm_is_imported_in_the_background() -> None:
    code = """
import json, sys, threading, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
before = 'litellm' in sys.modules
started = time.perf_counter()
shell.run_line_magic('load_ext', 'ipyllm')
load_s = time.perf_counter() - started
warm = [thread for thread in threading.enumerate() if thread.name == 'ipyllm-warm-up']
alive = bool(warm) and warm[0].is_alive()
from ipyllm import _litellm
loaded_at_return = _litellm._module is not None
warm[0].join(120)
print(json.dumps({'before': before, 'load_s': load_s, 'threads': len(warm), 'alive': alive,
                  'loaded_at_return': loaded_at_return, 'import_s': time.perf_counter() - started,
                  'loaded': _litellm._module is not None and 'litellm' in sys.modules}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=180)
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["before"] is False
    assert facts["threads"] == 1 and facts["alive"] and not facts["loaded_at_return"], "litellm was still importing in the thread"
    assert facts["loaded"], "the thread imported litellm"
    # litellm's import takes seconds (6-10 s on the 2-core machine); %load_ext does not wait for it.
    assert facts["load_s"] < 2.0 and facts["import_s"] > facts["load_s"], facts
