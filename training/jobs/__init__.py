"""Training jobs: a queue in the feedback store, a runner that runs each job in its own subprocess, and
what happens to the result.

    spec.py      what a job asks for (stage, method, data, name, parent, params), checked before queueing
    queue.py     the queue over the store's jobs table: submit, list, show, cancel
    progress.py  the JSON-lines progress file a worker writes and the runner and UI read
    faults.py    why a worker failed (error, signal, OOM) and the OOM retry with half the batch
    worker.py    `python -m training.jobs.worker JOB_DIR`: export or read the data, train, report
    publish.py   the finished adapter renamed into the adapters dir, registered, given a served name
    runner.py    the thread that starts queued jobs, follows them, cancels, recovers after a restart
    worker_process.py  a worker's process group (start, SIGTERM then SIGKILL) and its state file
"""
