"""The job side of the service: settings, the job store, the Celery app and (worker process only) tasks.

`worker.settings`, `worker.store` and `worker.queue` are light (no torch) and shared with the API;
`worker.tasks` imports lipcore's training and evaluation and is loaded only by worker processes.
"""
