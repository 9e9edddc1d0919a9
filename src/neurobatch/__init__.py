"""neurobatch."""
