"""fedxrec client."""
