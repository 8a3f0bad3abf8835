"""The HTTP API on Ray Serve: the app, its deployments, HTTP helpers and jobs."""
