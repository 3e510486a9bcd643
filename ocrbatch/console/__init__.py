"""The web console at `/console/`: server-rendered pages over the same operations as the API."""
