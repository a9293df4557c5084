"""The worker side of the service: the Celery app that runs jobs (worker.app), its tasks
(worker.tasks) and what a running job reports (worker.reporting).

Settings, the job store, job states and the queue interface are in `core`, shared with the API;
`worker.tasks` imports lipcore's training and evaluation and is loaded only by worker processes.
"""
