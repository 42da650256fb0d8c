"""fedxrec server."""
