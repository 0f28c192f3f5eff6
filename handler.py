"""RunPod serverless entry point: hands every job to seedvr.worker (the API is docs/API.md).

python handler.py                                   # on RunPod: take jobs from the queue
python handler.py --rp_serve_api --rp_api_port 8000 # local HTTP server (/run, /runsync, /status)
python handler.py --test_input "$(cat test_input.json)"
"""

import os

from seedvr.worker import handler, prepare

if __name__ == "__main__":
    # An endpoint variable set to "" (RunPod's tools write a static entry so) must not break the SDK's import.
    if not os.environ.get("RUNPOD_LOG_LEVEL", "").strip():
        os.environ["RUNPOD_LOG_LEVEL"] = "INFO"
    import runpod

    prepare()  # settings checked, weights fetched in the background: the worker takes jobs within seconds
    runpod.serverless.start({"handler": handler})
