"""The training service: datasets, jobs and metrics over HTTP, a durable job store, workers."""
