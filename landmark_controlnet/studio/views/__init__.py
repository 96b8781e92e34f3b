"""The Studio's views, one module each, and its API endpoints: layout only, over `studio.api`."""
