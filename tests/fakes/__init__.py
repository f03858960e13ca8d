"""Stand-ins for services the adapters talk to that cannot run here, each on 127.0.0.1."""
