"""The service core shared by `api` and `worker`: settings, the job store (with its migrations),
job states and kinds, and the queue interface that hands work to the workers.

Light on purpose (no torch, no training code): the API process imports it to enqueue work. It
imports neither `api` nor `worker`; of lipcore it uses only torch-free descriptions: the spec and
the catalog (cards, presets), `lipcore.data`'s spec resolution and `lipcore.cost`'s estimate, as
tests/test_imports.py's CORE_MAY_USE lists them (importing core loads no torch: checked there too).
"""
