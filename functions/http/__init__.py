"""The ingest function's HTTP API: the route table, its dispatch, its handlers, its document."""
