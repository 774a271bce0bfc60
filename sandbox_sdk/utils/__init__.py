"""Small helpers shared by the client, the CLI and the services."""
