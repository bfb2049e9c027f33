"""The demo page: log in as a demo user, watch pushes arrive per module, push to anyone (development only)."""
