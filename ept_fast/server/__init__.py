"""``ept-fast serve``: one frozen backbone serves many prompt adapters over HTTP, in mixed
batches (``batcher``), with OpenAI-style endpoints (``app``) and Prometheus metrics
(``metrics``). FastAPI and uvicorn come with ``pip install 'ept_fast[serve]'``."""
