"""Serving with weight separation: one base model in memory, each user's adapter per request, many users in
one batched pass. One job per file:

- ``engine.py``: slots (one injected copy of the base per adapter structure), swap, merge, decode;
- ``bank.py``: the batching contract strategies declare, and the pass that mixes users and structures;
- ``store.py``: reading and checking adapter directories and uploads, and the LRU of users' tensors;
- ``batcher.py``: collecting concurrent requests into batches;
- ``app.py``: the HTTP routes, authorisation and request parsing; ``limits.py``: every bound;
- ``keys.py``: user ids and access keys; ``audio.py``: request audio; ``launch.py``: ``serve``.
"""

from lightning_asr.serving.app import create_app
from lightning_asr.serving.engine import AdapterServer
from lightning_asr.serving.errors import ServeError
from lightning_asr.serving.keys import write_user_key
from lightning_asr.serving.launch import serve
from lightning_asr.serving.limits import ServiceLimits

__all__ = ["AdapterServer", "ServeError", "ServiceLimits", "create_app", "serve", "write_user_key"]
