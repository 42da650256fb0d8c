"""fedxrec simulations."""
