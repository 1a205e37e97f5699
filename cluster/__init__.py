"""Ray placement, pipeline stage actors, the distributed build and the planner."""
