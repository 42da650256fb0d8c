"""fedxrec server/api."""
