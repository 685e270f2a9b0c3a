"""The Faust app, its records and agents."""
