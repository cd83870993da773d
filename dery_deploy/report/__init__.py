"""Tables, plots and the run report."""
