"""Where jobs come from: scheduler integrations that write job maps and register jobs with the API."""
