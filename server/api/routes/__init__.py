"""One router per resource: health, recommendations (recommend/explain/score), items."""
