"""The worker as a process: its lifecycle and signals, the HTTP API, the SQS consumer."""
