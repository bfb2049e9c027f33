"""A small development agent serving the subset of Consul's HTTP API that wsgate uses. Not for production."""
