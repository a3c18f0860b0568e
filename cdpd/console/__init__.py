"""The web console at /console/ and the workspace model behind it: people, roles, API tokens
and sessions (state.py, access.py), the live debugger's tap on ingest (debugger.py), the flow
counts kept as messages move (flow.py) and the pages (pages/)."""
