"""Load for the running mesh: a Locust user that shops through the edge (``make load``)."""
