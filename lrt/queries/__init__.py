"""Read models that the CLI, the dashboard and UWS render."""
