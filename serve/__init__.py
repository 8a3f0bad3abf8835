"""sift serve: Ray Serve deployments, the HTTP API, the persistent job queue and the clients."""
