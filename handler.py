"""RunPod serverless entry point: hands every job to seedvr.worker (the API is docs/API.md).

python handler.py                                   # on RunPod: take jobs from the queue
python handler.py --rp_serve_api --rp_api_port 8000 # local HTTP server (/run, /runsync, /status)
python handler.py --test_input "$(cat test_input.json)"
"""

from seedvr.worker import handler, prepare

if __name__ == "__main__":
    import runpod

    prepare()  # settings, model code and SEEDVR_DOWNLOAD_MODELS now: a problem stops the worker before any job
    runpod.serverless.start({"handler": handler})
