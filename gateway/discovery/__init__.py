"""Service discovery: where the instances of a service are (static lists or Consul)."""
