"""One module per process of the pipeline; each is a loop that reads top to bottom."""
