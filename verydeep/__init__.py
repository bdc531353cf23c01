"""The ``verydeep`` command: one entry point that dispatches to the service and training wings."""
