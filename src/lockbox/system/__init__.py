"""Health and liveness endpoints."""
